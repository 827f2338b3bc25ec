"""A real Kubernetes API server for the tests: one per session, namespaces per test.

`kube_cluster` (session) starts etcd, kube-apiserver, kube-controller-manager and kube-scheduler
from `meshward.kube.cluster` (the same code `meshward kube cluster up` runs) under a temporary
directory, with RBAC on; the binaries are built once by `scripts/build_kube.sh` into a cache
outside the repository. `Kube` (per test) hands out fresh namespaces and deletes them afterwards,
so tests never see each other's objects.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.rest import ApiException

from meshward.kube.cluster import SA_ISSUER, LocalCluster, kube_bin_dir


@contextlib.contextmanager
def running_cluster(root: Path) -> Iterator[LocalCluster]:
    cluster = LocalCluster(root, kube_bin_dir(), controllers=True)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def compact_etcd(cluster: LocalCluster) -> int:
    """Move etcd's revision on (a key outside the API server's prefix) and compact its history up
    to there, as the API server itself does every 5 minutes: a watch from an older
    resourceVersion that etcd must serve is then refused. Returns the compacted revision."""

    def call(method: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{cluster.etcd_port}/v3/{method}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 (loopback etcd)
            answer: dict[str, Any] = json.loads(resp.read())
        return answer

    key = base64.b64encode(b"/meshward-tests/compaction").decode()
    value = base64.b64encode(str(time.time()).encode()).decode()
    revision = int(call("kv/put", {"key": key, "value": value})["header"]["revision"])
    call("kv/compaction", {"revision": str(revision), "physical": True})
    return revision


def admin_client(cluster: LocalCluster) -> k8s.ApiClient:
    return k8s_config.new_client_from_config(config_file=str(cluster.kubeconfig))


def wait_for(what: str, check: Callable[[], Any], timeout: float = 90.0) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


@dataclass
class Kube:
    """The session's cluster as one test sees it."""

    cluster: LocalCluster
    api: k8s.ApiClient
    namespaces: list[str] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)
    cluster_objects: list[tuple[str, str]] = field(default_factory=list)  # (kind, name)

    @property
    def core(self) -> k8s.CoreV1Api:
        return k8s.CoreV1Api(self.api)

    @property
    def custom(self) -> k8s.CustomObjectsApi:
        return k8s.CustomObjectsApi(self.api)

    @property
    def rbac(self) -> k8s.RbacAuthorizationV1Api:
        return k8s.RbacAuthorizationV1Api(self.api)

    @property
    def discovery(self) -> k8s.DiscoveryV1Api:
        return k8s.DiscoveryV1Api(self.api)

    def namespace(self, prefix: str = "t") -> str:
        name = f"{prefix}-{secrets.token_hex(3)}"
        self.core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
        self.namespaces.append(name)
        return name

    def node(self, prefix: str = "node") -> str:
        """A Node object (no kubelet behind it): pods bound to it are what agents attest."""
        name = f"{prefix}-{secrets.token_hex(3)}"
        self.core.create_node(k8s.V1Node(metadata=k8s.V1ObjectMeta(name=name)))
        self.nodes.append(name)
        return name

    def service_account(self, namespace: str, name: str) -> None:
        self.core.create_namespaced_service_account(
            namespace, k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name=name))
        )

    def pod(
        self,
        namespace: str,
        name: str,
        *,
        service_account: str,
        node: str,
        labels: dict[str, str] | None = None,
        ip: str | None = None,
        phase: str = "Running",
    ) -> dict[str, Any]:
        """A Pod bound to `node`, its status set as a kubelet would (phase, podIP, Ready, and for
        each container a runtime id, `containerd://<64 hex>`); returns its name, uid and
        {container name: id}."""
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": labels or {}},
            "spec": {
                "serviceAccountName": service_account,
                "nodeName": node,
                "automountServiceAccountToken": False,
                "containers": [
                    {"name": "app", "image": "meshward/demo"},
                    {"name": "istio-proxy", "image": "meshward/proxy"},
                ],
            },
        }
        created = self.core.create_namespaced_pod(namespace, body)
        ids = {c["name"]: secrets.token_hex(32) for c in body["spec"]["containers"]}
        status: dict[str, Any] = {
            "phase": phase,
            "containerStatuses": [
                {
                    "name": name, "image": f"meshward/{name}", "imageID": "", "ready": True,
                    "restartCount": 0, "started": True, "containerID": f"containerd://{cid}",
                    "state": {"running": {"startedAt": "2026-12-01T00:00:00Z"}},
                }
                for name, cid in ids.items()
            ],
        }  # fmt: skip
        if ip is not None:
            status["podIP"] = ip
            status["podIPs"] = [{"ip": ip}]
        if phase == "Running":
            status["conditions"] = [{"type": "Ready", "status": "True"}]
        self.core.patch_namespaced_pod_status(name, namespace, {"status": status})
        return {"name": name, "uid": created.metadata.uid, "containers": ids}

    def delete_pod(self, namespace: str, name: str) -> None:
        # Grace 0: no kubelet will confirm a graceful deletion, so the Pod goes at once.
        self.core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)

    def token(
        self,
        namespace: str,
        service_account: str,
        *,
        pod: dict[str, Any] | None = None,
        audience: str = "istio-ca",
        seconds: int = 600,
    ) -> str:
        """A projected-style ServiceAccount token from the TokenRequest API (bound to `pod`)."""
        bound = None
        if pod is not None:
            bound = k8s.V1BoundObjectReference(
                kind="Pod", api_version="v1", name=pod["name"], uid=pod["uid"]
            )
        spec = k8s.V1TokenRequestSpec(
            audiences=[audience], expiration_seconds=seconds, bound_object_ref=bound
        )
        answer = self.core.create_namespaced_service_account_token(
            service_account, namespace, k8s.AuthenticationV1TokenRequest(spec=spec)
        )
        return str(answer.status.token)

    def expired_token(self, namespace: str, service_account: str, pod: dict[str, Any]) -> str:
        """A token signed by the cluster's own SA key whose `exp` has passed.

        TokenRequest refuses lifetimes under 10 minutes, so the test signs one with the key the
        API server signs with: the claims are the API server's own, only the times are old.
        """
        sa = self.core.read_namespaced_service_account(service_account, namespace)
        now = int(time.time())
        claims = {
            "iss": SA_ISSUER,
            "aud": ["istio-ca"],
            "sub": f"system:serviceaccount:{namespace}:{service_account}",
            "iat": now - 1200,
            "nbf": now - 1200,
            "exp": now - 600,
            "kubernetes.io": {
                "namespace": namespace,
                "serviceaccount": {"name": service_account, "uid": sa.metadata.uid},
                "pod": {"name": pod["name"], "uid": pod["uid"]},
            },
        }
        key = (self.cluster.pki / "sa.key").read_bytes()
        return jwt.encode(claims, key, algorithm="RS256")

    def kubeconfig_for(self, namespace: str, service_account: str, path: Path) -> Path:
        """A kubeconfig that authenticates as the service account (a 1 h token), written 0600."""
        token = self.token(namespace, service_account, audience=SA_ISSUER, seconds=3600)
        text = (
            "apiVersion: v1\nkind: Config\n"
            f"clusters:\n- name: c\n  cluster:\n    server: {self.cluster.server}\n"
            f"    certificate-authority: {self.cluster.pki / 'ca.crt'}\n"
            f"users:\n- name: u\n  user:\n    token: {token}\n"
            "contexts:\n- name: c\n  context:\n    cluster: c\n    user: u\n"
            "current-context: c\n"
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        return path

    def service(self, namespace: str, name: str, pod: dict[str, Any], ip: str, port: int) -> None:
        """A Service selecting app=`name`, and its EndpointSlice as the endpointslice controller
        writes it for the ready `pod` (written here so tests do not wait on its batching)."""
        self.core.create_namespaced_service(
            namespace,
            {
                "metadata": {"name": name},
                "spec": {"selector": {"app": name}, "ports": [{"port": port, "targetPort": port}]},
            },
        )
        self.discovery.create_namespaced_endpoint_slice(
            namespace,
            {
                "metadata": {
                    "name": f"{name}-test",
                    "labels": {"kubernetes.io/service-name": name},
                },
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
                "endpoints": [
                    {
                        "addresses": [ip],
                        "conditions": {"ready": True},
                        "targetRef": {"kind": "Pod", "name": pod["name"], "namespace": namespace},
                    }
                ],
            },
        )

    def policy(self, namespace: str, name: str, spec: dict[str, Any]) -> None:
        """A security.istio.io/v1 AuthorizationPolicy."""
        self.custom.create_namespaced_custom_object(
            "security.istio.io", "v1", namespace, "authorizationpolicies",
            {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
             "metadata": {"name": name}, "spec": spec},
        )  # fmt: skip

    def delete_policy(self, namespace: str, name: str) -> None:
        self.custom.delete_namespaced_custom_object(
            "security.istio.io", "v1", namespace, "authorizationpolicies", name
        )

    def cleanup(self) -> None:
        for ns in self.namespaces:
            with contextlib.suppress(ApiException):
                self.core.delete_collection_namespaced_pod(ns, grace_period_seconds=0)
            with contextlib.suppress(ApiException):
                self.core.delete_namespace(ns)
        for node in self.nodes:
            with contextlib.suppress(ApiException):
                self.core.delete_node(node)
        for kind, name in self.cluster_objects:
            with contextlib.suppress(ApiException):
                if kind == "ClusterRoleBinding":
                    self.rbac.delete_cluster_role_binding(name)
                elif kind == "ClusterRole":
                    self.rbac.delete_cluster_role(name)


# -- the control plane on Kubernetes ---------------------------------------------------------


def install_istio_crds(api: k8s.ApiClient, timeout: float = 60.0) -> None:
    """The Istio CRDs meshward ships (security, ServiceEntry); idempotent; returns once they serve."""
    from ca.kube.crds import istio_crds

    ext = k8s.ApiextensionsV1Api(api)
    for crd in istio_crds():
        try:
            ext.create_custom_resource_definition(crd)
        except ApiException as exc:
            if exc.status != 409:
                raise

    def established() -> bool:
        for crd in istio_crds():
            got = ext.read_custom_resource_definition(crd["metadata"]["name"])
            conds = {c.type: c.status for c in (got.status.conditions or [])}
            if conds.get("Established") != "True":
                return False
        return True

    wait_for("the Istio CRDs to be established", established, timeout)


def install_cluster_role(api: k8s.ApiClient) -> None:
    """The ClusterRole `meshward manifest generate` ships, exactly (replaced if it drifted)."""
    from ca.kube.rbac import cluster_role

    rbac = k8s.RbacAuthorizationV1Api(api)
    role = cluster_role()
    try:
        rbac.create_cluster_role(role)
    except ApiException as exc:
        if exc.status != 409:
            raise
        rbac.replace_cluster_role(role["metadata"]["name"], role)


@dataclass
class KubeMesh:
    """A control plane on the session's cluster, running as a service account bound to exactly
    the shipped ClusterRole, with its node agents' service account in a namespace of its own."""

    kube: Kube
    cp: Any  # tests.harness.control_plane.ControlPlane
    agent_namespace: str
    agent_service_account: str = "meshward-node-agent"

    def agent_pod(self, node: str, name: str | None = None) -> dict[str, Any]:
        return self.kube.pod(
            self.agent_namespace,
            name or f"agent-{secrets.token_hex(3)}",
            service_account=self.agent_service_account,
            node=node,
        )

    def agent_token(self, pod: dict[str, Any], audience: str = "istio-ca") -> str:
        return self.kube.token(
            self.agent_namespace, self.agent_service_account, pod=pod, audience=audience
        )


def control_plane_account(kube: Kube) -> str:
    """A namespace whose `meshward-control-plane` service account is bound to exactly the
    shipped ClusterRole (and no more); returns the namespace."""
    from ca.kube.rbac import CLUSTER_ROLE_NAME, cluster_role_binding

    install_cluster_role(kube.api)
    cp_ns = kube.namespace("cp")
    kube.service_account(cp_ns, "meshward-control-plane")
    binding = cluster_role_binding(cp_ns, "meshward-control-plane", CLUSTER_ROLE_NAME)
    binding["metadata"]["name"] = f"meshward-control-plane-{cp_ns}"
    kube.rbac.create_cluster_role_binding(binding)
    kube.cluster_objects.append(("ClusterRoleBinding", binding["metadata"]["name"]))
    return cp_ns


@contextlib.contextmanager
def kube_control_plane(
    kube: Kube,
    tmp_path: Path,
    extra_args: tuple[str, ...] = (),
    *,
    trust_domain: str = "cluster.local",
    plugin_ca_dir: Path | None = None,
) -> Iterator[KubeMesh]:
    from tests.harness.control_plane import ControlPlane

    install_istio_crds(kube.api)
    cp_ns = control_plane_account(kube)
    agents = kube.namespace("agents")
    kube.service_account(agents, "meshward-node-agent")
    tmp_path.mkdir(parents=True, exist_ok=True)
    kubeconfig = kube.kubeconfig_for(cp_ns, "meshward-control-plane", tmp_path / "cp.kubeconfig")

    class KubeControlPlane(ControlPlane):
        def argv(self) -> list[str]:
            args = super().argv()
            at = args.index("--registry")
            del args[at : at + 2]
            return args

    cp = KubeControlPlane(
        tmp_path,
        "",
        trust_domain=trust_domain,
        plugin_ca_dir=plugin_ca_dir,
        extra_args=(
            "--kubernetes", "--kubeconfig", str(kubeconfig),
            "--agent-service-account", f"{agents}/meshward-node-agent", *extra_args,
        ),
    )  # fmt: skip
    try:
        cp.start()
        yield KubeMesh(kube, cp, agents)
    finally:
        cp.stop()


def kube_node_agent(tmp_path: Path, mesh: KubeMesh, node: str, token: str) -> Any:
    """`meshward agent run --kubernetes --token-file F` for `node` (not started): F holds the
    agent pod's projected ServiceAccount token, as the kubelet writes it."""
    from tests.harness.node_agent import NodeAgent

    tmp_path.mkdir(parents=True, exist_ok=True)
    token_file = tmp_path / f"{node}.token"
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token)

    class KubeAgent(NodeAgent):
        def argv(self) -> list[str]:
            self._bootstrapped = True  # no join token: the ServiceAccount token instead
            return [*super().argv(), "--kubernetes", "--token-file", str(token_file)]

    return KubeAgent(tmp_path, mesh.cp, node, "1h")
