"""Federation on Kubernetes, for real: mesh A's control plane runs `ca serve --kubernetes` against
the API server (trust domain a.example, its Pods and ServiceEntries from the API, its node agent
bootstrapped by a ServiceAccount token, its pod's sidecar in the cgroup the kubelet names); mesh
B is file-based (b.example), as in test_federation_pods.py. Each serves its SPIFFE bundle
endpoint and federates with the other.

- A's kube-mode CA fetches B's bundle; an unmodified SPIFFE client (the `spiffe` package) in A's
  Pod's sidecar container gets it as a federated bundle from A's agent.
- A ServiceEntry for B's service applied through the API reaches A's sidecar: A's pod calls B's
  pod over mTLS across the federation, and B's app sees A's SPIFFE ID in XFCC. Before it, the
  call fails; an edit naming another identity in subjectAltNames makes A's sidecar refuse B's
  certificate (secure naming); the right one restores the call.
- An edit our rules refuse (Istio's schema takes `addresses`, we do not) is one line in A's log
  and in `kubernetes-refused.json`, and the last good entry keeps the call working.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from kubernetes.client.rest import ApiException

from meshward.inspect.checks import kubernetes_policy_check
from meshward.inspect.gather import kubernetes_refused
from meshward_common.ports import PROXY_UID
from tests.harness.control_plane import ControlPlane, free_port, run_control_plane
from tests.harness.federation import bundle_endpoint_args, dev_certs, federation_config
from tests.harness.kube import Kube, kube_control_plane, kube_node_agent, wait_for
from tests.harness.kubelet import cgroup2_hierarchy, container_cgroup
from tests.harness.node_agent import run_node_agent
from tests.harness.pods import Pod, PodNetwork, add_intercepted_pod, pod_network
from tests.node_agent.test_kube_agent_e2e import KubeNode
from tests.sidecar_tls.test_federation_pods import ALLOW, HOST, RATINGS_ID, URL
from tests.sidecar_tls.test_tracing_pods import clean_env, get

pytestmark = [pytest.mark.netns, pytest.mark.slow]

PREFIX, SUBNET = "mwkf", "10.213.224.0/24"
REPO = Path(__file__).resolve().parents[2]
APP_UID = 1000
A, B = "a.example", "b.example"

# An unmodified SPIFFE client: the bundles the Workload API gives the caller, by trust domain.
FETCH_BUNDLES = r"""
import hashlib, json, sys
from cryptography.hazmat.primitives.serialization import Encoding
from spiffe import TrustDomain, WorkloadApiClient
with WorkloadApiClient(socket_path=sys.argv[1]) as client:
    bundles = client.fetch_x509_bundles(timeout=20)
out = {}
for td in ("a.example", "b.example"):
    bundle = bundles.get_bundle_for_trust_domain(TrustDomain(td))
    if bundle is not None:
        out[td] = sorted(hashlib.sha256(c.public_bytes(Encoding.DER)).hexdigest()
                         for c in bundle.x509_authorities)
print(json.dumps({"code": "OK", "bundles": out}))
"""


def root_sha(certs: Path) -> list[str]:
    (root,) = x509.load_pem_x509_certificates((certs / "root-cert.pem").read_bytes())
    return [hashlib.sha256(root.public_bytes(serialization.Encoding.DER)).hexdigest()]


def registry_b(pod: Pod) -> str:
    return f"""trustDomain: {B}
workloads:
  - name: b
    namespace: default
    serviceAccount: ratings
    node: node-b
    labels: {{app: ratings}}
    address: {pod.ip}
    ports: [9080]
    selector: {{netns: {pod.netns}, uids: [{PROXY_UID}]}}
"""


def service_entry(address: str, san: str = RATINGS_ID, **extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": "ratings-b"},
        "spec": {
            "hosts": [HOST],
            "location": "MESH_INTERNAL",
            "resolution": "STATIC",
            "ports": [{"number": 9080, "name": "http", "protocol": "HTTP"}],
            "endpoints": [{"address": address}],
            "subjectAltNames": [san],
            **extra,
        },
    }


def sidecar_argv(agent_socket: Path, pod: Pod, workload: str, namespace: str) -> list[str]:
    return [
        sys.executable, "-m", "meshward", "sidecar", "run",
        "--agent-socket", str(agent_socket), "--pod-ip", pod.ip,
        "--workload", workload, "--namespace", namespace,
    ]  # fmt: skip


def call(net: PodNetwork, pod: Pod) -> dict[str, Any]:
    argv = [sys.executable, "-m", "tests.sidecar_tls.pod_apps", "http-get", URL]
    done = net.run(pod, argv, uid=APP_UID, env={**clean_env(), "PYTHONPATH": str(REPO)})
    if done.returncode != 0:
        return {"status": -1, "body": done.stderr[-300:]}
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


@contextlib.contextmanager
def mesh_b(
    tmp: Path, net: PodNetwork, certs: dict[str, Path], ports: dict[str, int], namespace: str
) -> Iterator[ControlPlane]:
    """Mesh B on files: its CA (federating with A), agent, sidecar and app; its policy allows
    A's pod's service account only."""
    policies = tmp / "policies-b"
    policies.mkdir()
    (policies / "ratings.yaml").write_text(ALLOW.format(principal=f"{A}/ns/{namespace}/sa/x"))
    config = federation_config(
        tmp / "federation-b.yaml", A, ports["a"], certs["a"] / "root-cert.pem"
    )
    pod = net.pod("b")
    with ExitStack() as stack:
        cp = stack.enter_context(
            run_control_plane(
                tmp / "cp-b", registry_b(pod), trust_domain=B, plugin_ca_dir=certs["b"],
                policy_dir=policies,
                extra_args=("--config", str(config), "--workers", "1",
                            *bundle_endpoint_args(ports["b"])),
            )
        )  # fmt: skip
        agent = stack.enter_context(run_node_agent(tmp, cp, node="node-b"))
        env = clean_env()
        with (tmp / "sidecar-b.log").open("wb") as out:
            net.spawn(pod, sidecar_argv(agent.socket_path, pod, "b", "default"), uid=PROXY_UID,
                      env=env, stdout=out, stderr=out, cwd=REPO)  # fmt: skip
        with (tmp / "app-b.log").open("wb") as out:
            net.spawn(
                pod, [sys.executable, "-m", "tests.sidecar_tls.pod_apps", "http-server", "9080"],
                uid=APP_UID, env=env, stdout=out, stderr=out, cwd=REPO,
            )  # fmt: skip
        yield cp


def test_a_kube_mode_ca_federates_and_a_service_entry_from_the_api_reaches_its_sidecar(
    kube: Kube, tmp_path: Path
) -> None:
    certs = {m: dev_certs(tmp_path / f"certs-{m}", td) for m, td in (("a", A), ("b", B))}
    ports = {"a": free_port(), "b": free_port()}
    config_a = federation_config(
        tmp_path / "federation-a.yaml", B, ports["b"], certs["b"] / "root-cert.pem"
    )
    ns = kube.namespace("fed")
    kube.service_account(ns, "x")
    logs = tmp_path / "logs"
    logs.mkdir()
    with ExitStack() as stack:
        cgroups = stack.enter_context(cgroup2_hierarchy(tmp_path / "cgroup2"))
        net = stack.enter_context(pod_network(PREFIX, SUBNET))
        pod_a, pod_b = add_intercepted_pod(net, "a"), add_intercepted_pod(net, "b")
        net.set_hosts({HOST: [pod_b.ip]})
        # B first: A's first fetch of B's bundle then succeeds (no wait for a retry).
        cp_b = stack.enter_context(mesh_b(logs, net, certs, ports, ns))
        mesh = stack.enter_context(
            kube_control_plane(
                kube, tmp_path / "cp-a",
                ("--config", str(config_a), "--workers", "1", *bundle_endpoint_args(ports["a"])),
                trust_domain=A, plugin_ca_dir=certs["a"],
            )
        )  # fmt: skip
        name = kube.node("n")
        token = mesh.agent_token(mesh.agent_pod(name))
        agent = kube_node_agent(tmp_path / "agent", mesh, name, token)
        node = KubeNode(kube, mesh, net, agent, name, cgroups, logs)
        try:
            agent.start()
            _scenario(kube, node, cp_b, certs, ns, pod_a, pod_b)
        finally:
            # At once, not with the namespace (which terminates in the background): other
            # tests' control planes watch every namespace and would see it refused.
            with contextlib.suppress(ApiException):
                kube.custom.delete_namespaced_custom_object(
                    "networking.istio.io", "v1", ns, "serviceentries", "ratings-b"
                )
            node.stop()
            agent.stop()
            shutil.rmtree(agent.socket_path.parent, ignore_errors=True)


def _scenario(
    kube: Kube, node: KubeNode, cp_b: ControlPlane, certs: dict[str, Path], ns: str,
    pod_a: Pod, pod_b: Pod,
) -> None:  # fmt: skip
    mesh, net = node.mesh, node.net

    def logs() -> str:
        return f"{node.logs()}\n== cp-b\n{cp_b.log()[-2000:]}"

    def status_a() -> dict[str, Any]:
        path = mesh.cp.state_dir / "ca-status.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def until(what: str, check: Any, timeout: float = 90.0) -> Any:
        def safely() -> Any:
            with contextlib.suppress(OSError):  # a port not listening yet
                return check()
            return None

        try:
            return wait_for(what, safely, timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{logs()}") from None

    api_pod = kube.pod(ns, "a-1", service_account="x", node=node.name, labels={"app": "a"},
                       ip=pod_a.ip)  # fmt: skip
    node.start(pod_a, api_pod, "istio-proxy", sidecar_argv(node.agent.socket_path, pod_a,
               "a-1", ns), PROXY_UID, "sidecar-a")  # fmt: skip
    for pod in (pod_a, pod_b):
        until(f"sidecar {pod.name} ready",
              lambda ip=pod.ip: get(f"http://{ip}:15021/healthz/ready")[0] == 200)  # fmt: skip

    # A's kube-mode CA fetched B's bundle; A's pod's SPIFFE client sees it federated.
    until("A's CA refreshed B's bundle",
          lambda: status_a().get("federation", {}).get(B, {}).get("refreshed"))  # fmt: skip
    sidecar = container_cgroup(node.cgroups, api_pod)
    seen = until(
        "both bundles through A's Workload API",
        lambda: (r := node.fetch_svid(pod_a, sidecar, script=FETCH_BUNDLES)).get("bundles", {})
        .get(B) and r,
    )  # fmt: skip
    assert seen["bundles"] == {A: root_sha(certs["a"]), B: root_sha(certs["b"])}

    # No ServiceEntry yet: A's sidecar does not know B's service, and B refuses the call.
    assert call(net, pod_a)["status"] != 200

    def create(obj: dict[str, Any]) -> None:
        kube.custom.create_namespaced_custom_object(
            "networking.istio.io", "v1", ns, "serviceentries", obj
        )

    def patch_spec(spec: dict[str, Any]) -> None:
        kube.custom.patch_namespaced_custom_object(
            "networking.istio.io", "v1", ns, "serviceentries", "ratings-b", {"spec": spec}
        )

    create(service_entry(pod_b.ip))
    until("A's call answered through both sidecars", lambda: call(net, pod_a)["status"] == 200)
    received = json.loads(call(net, pod_a)["body"])
    (xfcc,) = received["headers"]["x-forwarded-client-cert"]
    assert xfcc.startswith(f"By={RATINGS_ID};Hash=")
    assert xfcc.endswith(f";URI=spiffe://{A}/ns/{ns}/sa/x")

    # Secure naming from the API: an entry naming another identity makes A refuse B's cert.
    patch_spec({"subjectAltNames": [f"spiffe://{B}/ns/default/sa/someone-else"]})
    until("A refuses B's certificate", lambda: call(net, pod_a)["status"] in (502, 503))
    patch_spec({"subjectAltNames": [RATINGS_ID]})
    until("A's call answered again", lambda: call(net, pod_a)["status"] == 200)

    # An edit Istio's schema takes and our rules refuse: one line, the last good entry stays.
    source = f"ServiceEntry/{ns}/ratings-b"
    patch_spec({"addresses": ["240.0.0.1"]})
    why = until("the edit refused and reported",
                lambda: (kubernetes_refused(mesh.cp.state_dir) or {}).get(source))  # fmt: skip
    assert why.endswith(
        ": spec.addresses: VIPs are not supported: the app calls the endpoints' addresses"
    )
    lines = [
        line for line in mesh.cp.log().splitlines()
        if f"ServiceEntry refused, keeping the last good version: {source}:" in line
    ]  # fmt: skip
    assert len(lines) == 1, lines
    refused = kubernetes_refused(mesh.cp.state_dir)  # what `meshward check` reads
    check = kubernetes_policy_check(refused)
    assert check is not None
    assert not check.ok
    assert refused is not None
    assert check.detail.startswith(f"{len(refused)} refused: ")
    assert call(net, pod_a)["status"] == 200
