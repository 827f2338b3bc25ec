"""`meshward ca serve --kubernetes` against a real API server (etcd + kube-apiserver).

The control plane runs as a service account bound to exactly the ClusterRole the manifests ship.
Node agents authenticate with ServiceAccount tokens from the TokenRequest API (what the kubelet
projects into their pods); the mesh state follows the API.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshward.inspect.checks import kubernetes_policy_check
from meshward.inspect.gather import kubernetes_refused
from meshward_common.protos import meshward_discovery_pb2 as discovery_pb2
from meshward_common.spiffe_id import node_id
from meshward_common.svid import verify_x509_svid
from tests.ca import wire
from tests.harness.control_plane import free_port
from tests.harness.kube import Kube, KubeMesh, kube_control_plane, kube_node_agent, wait_for

pytestmark = pytest.mark.slow
TD = "cluster.local"


@pytest.fixture
def mesh(kube: Kube, tmp_path: Path) -> Iterator[KubeMesh]:
    metrics = ("--metrics-listen", f"127.0.0.1:{free_port()}")
    with kube_control_plane(kube, tmp_path / "cp", metrics) as m:
        yield m


def refused_gauges(mesh: KubeMesh) -> dict[str, float]:
    """meshward_ca_kubernetes_refused_objects by kind, scraped from the supervisor."""
    args = mesh.cp.extra_args
    address = args[args.index("--metrics-listen") + 1]
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {
        s.labels["kind"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "meshward_ca_kubernetes_refused_objects"
    }


def bootstrap(mesh: KubeMesh, node: str, token: str) -> wire.Credential:
    key = wire.new_key()
    with wire.channel(mesh.cp.address, mesh.cp.bundle_pem()) as ch:
        chain = wire.create_certificate(
            ch, wire.make_csr(key), token=token, impersonate=str(node_id(TD, node))
        )
    return wire.Credential(key, chain)


def refused(mesh: KubeMesh, node: str, token: str) -> grpc.RpcError:
    return wire.rpc_error(bootstrap, mesh, node, token)


def agent_of(mesh: KubeMesh, node: str) -> wire.Credential:
    return bootstrap(mesh, node, mesh.agent_token(mesh.agent_pod(node)))


class States:
    """The MeshDiscovery stream of one node agent, read in a thread."""

    def __init__(self, mesh: KubeMesh, cred: wire.Credential) -> None:
        self.channel = wire.channel(mesh.cp.address, mesh.cp.bundle_pem(), cred)
        self.latest: discovery_pb2.MeshState | None = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for state in wire.stream_states(self.channel):
                self.latest = state
        except grpc.RpcError:
            pass

    def workload(self, namespace: str, name: str) -> Any:
        state = self.latest
        if state is None:
            return None
        found = [w for w in state.workloads if w.namespace == namespace and w.name == name]
        return found[0] if found else None

    def policy_sources(self) -> set[str]:
        return {p.source for p in self.latest.policies} if self.latest else set()

    def close(self) -> None:
        self.channel.close()


@pytest.fixture
def node_a(kube: Kube) -> str:
    return kube.node("a")


@pytest.fixture
def node_b(kube: Kube) -> str:
    return kube.node("b")


def test_agent_token_gets_the_node_svid_of_its_pods_node(mesh: KubeMesh, node_a: str) -> None:
    cred = agent_of(mesh, node_a)
    sid = verify_x509_svid(cred.chain[:-1], cred.chain[-1:], wire.utcnow())
    assert sid == node_id(TD, node_a)
    audit = mesh.cp.audit_path.read_text()
    assert f"node/{node_a} (kube-token)" in audit


def test_token_for_another_audience_is_unauthenticated(mesh: KubeMesh, node_a: str) -> None:
    pod = mesh.agent_pod(node_a)
    err = refused(mesh, node_a, mesh.agent_token(pod, audience="someone-else"))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "TokenReview" in err.details()


def test_expired_token_is_unauthenticated(mesh: KubeMesh, kube: Kube, node_a: str) -> None:
    pod = mesh.agent_pod(node_a)
    token = kube.expired_token(mesh.agent_namespace, mesh.agent_service_account, pod)
    err = refused(mesh, node_a, token)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED


def test_token_of_another_service_account_is_denied(
    mesh: KubeMesh, kube: Kube, node_a: str
) -> None:
    kube.service_account(mesh.agent_namespace, "not-the-agent")
    pod = kube.pod(mesh.agent_namespace, "imposter", service_account="not-the-agent", node=node_a)
    token = kube.token(mesh.agent_namespace, "not-the-agent", pod=pod)
    err = refused(mesh, node_a, token)
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "not of the node agents' service account" in err.details()


def test_token_of_a_pod_on_another_node_is_denied(mesh: KubeMesh, node_a: str, node_b: str) -> None:
    token = mesh.agent_token(mesh.agent_pod(node_b))
    err = refused(mesh, node_a, token)
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert f"node/{node_b}" in err.details()


def test_token_of_a_deleted_pod_is_refused(mesh: KubeMesh, kube: Kube, node_a: str) -> None:
    pod = mesh.agent_pod(node_a)
    token = mesh.agent_token(pod)
    bootstrap(mesh, node_a, token)  # valid while the pod exists
    kube.delete_pod(mesh.agent_namespace, pod["name"])

    # The API server's token-review cache (~10 s) still says yes for a moment; the control
    # plane's own watch of Pods learns of the deletion and refuses as soon as it has.
    def now_refused() -> grpc.RpcError | None:
        try:
            bootstrap(mesh, node_a, token)
        except grpc.RpcError as exc:
            return exc
        return None

    err = wait_for("the deleted pod's token to be refused", now_refused, timeout=90)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "no longer exists" in err.details()


def test_join_tokens_keep_working_beside_kubernetes(mesh: KubeMesh) -> None:
    token = mesh.cp.join_token("outside-node")
    cred = wire.bootstrap(mesh.cp.address, mesh.cp.bundle_pem(), token)
    sid = verify_x509_svid(cred.chain[:-1], cred.chain[-1:], wire.utcnow())
    assert sid == node_id(TD, "outside-node")


DENY_REVIEWS = {
    "selector": {"matchLabels": {"app": "reviews"}},
    "action": "DENY",
    "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/x/sa/y"]}}]}],
}


def test_mesh_state_follows_pods_services_and_policies(
    mesh: KubeMesh, kube: Kube, node_a: str
) -> None:
    states = States(mesh, agent_of(mesh, node_a))
    try:
        ns = kube.namespace("app")
        kube.service_account(ns, "bookinfo-reviews")
        pod = kube.pod(
            ns, "reviews-v1", service_account="bookinfo-reviews", node=node_a,
            labels={"app": "reviews", "version": "v1"}, ip="10.244.1.7",
        )  # fmt: skip
        # Created, then its status reported (two events, as from a kubelet): wait for the second.
        w = wait_for(
            "the pod and its IP in the mesh state",
            lambda: (x := states.workload(ns, "reviews-v1")) is not None and x.address and x,
        )
        assert w.spiffe_id == f"spiffe://{TD}/ns/{ns}/sa/bookinfo-reviews"
        assert (w.node, w.address, w.pod_uid) == (node_a, "10.244.1.7", pod["uid"])
        assert dict(w.labels) == {"app": "reviews", "version": "v1"}

        kube.service(ns, "reviews", pod, "10.244.1.7", 9080)
        w = wait_for(
            "the pod's service",
            lambda: (x := states.workload(ns, "reviews-v1")) is not None and x.service and x,
        )
        assert (w.service, list(w.ports)) == ("reviews", [9080])

        kube.core.patch_namespaced_pod("reviews-v1", ns, {"metadata": {"labels": {"v": "2"}}})
        wait_for(
            "the label update",
            lambda: (x := states.workload(ns, "reviews-v1")) is not None and "v" in x.labels,
        )

        kube.policy(ns, "deny-y", DENY_REVIEWS)
        source = f"AuthorizationPolicy/{ns}/deny-y"
        wait_for("the policy in the mesh state", lambda: source in states.policy_sources())

        kube.custom.delete_namespaced_custom_object(
            "security.istio.io", "v1", ns, "authorizationpolicies", "deny-y"
        )
        wait_for("the policy gone", lambda: source not in states.policy_sources())

        kube.delete_pod(ns, "reviews-v1")
        wait_for("the pod gone", lambda: states.workload(ns, "reviews-v1") is None)
    finally:
        states.close()


def test_an_invalid_policy_is_reported_and_changes_nothing(
    mesh: KubeMesh, kube: Kube, node_a: str
) -> None:
    states = States(mesh, agent_of(mesh, node_a))
    try:
        ns = kube.namespace("pol")
        kube.policy(ns, "good", DENY_REVIEWS)
        good = f"AuthorizationPolicy/{ns}/good"
        wait_for("the good policy", lambda: good in states.policy_sources())
        assert refused_gauges(mesh) == {"AuthorizationPolicy": 0, "PeerAuthentication": 0}
        check = kubernetes_policy_check(kubernetes_refused(mesh.cp.state_dir))
        assert check is not None
        assert check.ok
        version = states.latest.version_info if states.latest else ""
        served = {p.source: p.yaml for p in states.latest.policies} if states.latest else {}

        # A typo'd condition key: the CRD schema lets any string through, the engine does not.
        typo = {
            "action": "DENY",
            "rules": [{"when": [{"key": "source.ipp", "values": ["1.2.3.4"]}]}],
        }
        kube.policy(ns, "typo", typo)
        refused_file = mesh.cp.state_dir / "kubernetes-refused.json"
        bad = f"AuthorizationPolicy/{ns}/typo"
        reasons = wait_for(
            "the refusal reported",
            lambda: refused_file.exists() and json.loads(refused_file.read_text()).get(bad),
        )
        assert "source.ipp" in reasons
        assert "policy refused" in mesh.cp.log()
        assert refused_gauges(mesh)["AuthorizationPolicy"] == 1
        # `meshward check`'s line: failed, naming the object and why.
        check = kubernetes_policy_check(kubernetes_refused(mesh.cp.state_dir))
        assert check is not None
        assert not check.ok
        assert bad in check.detail
        assert "source.ipp" in check.detail
        assert bad not in states.policy_sources()
        assert states.latest is not None
        assert states.latest.version_info == version

        # A good policy edited into a bad one: its last good version stays in force.
        kube.custom.patch_namespaced_custom_object(
            "security.istio.io", "v1", ns, "authorizationpolicies", "good",
            {"spec": {"rules": [{"when": [{"key": "request.hedaers[x]", "values": ["1"]}]}]}},
        )  # fmt: skip
        wait_for(
            "the edit refused",
            lambda: good in json.loads(refused_file.read_text()),
        )
        assert {p.source: p.yaml for p in states.latest.policies}[good] == served[good]
        assert refused_gauges(mesh)["AuthorizationPolicy"] == 2

        # Deleting a refused object clears its report.
        kube.custom.delete_namespaced_custom_object(
            "security.istio.io", "v1", ns, "authorizationpolicies", "typo"
        )
        wait_for("the refusal cleared", lambda: bad not in json.loads(refused_file.read_text()))
        assert refused_gauges(mesh)["AuthorizationPolicy"] == 1
    finally:
        states.close()


def test_workload_identity_only_while_its_pod_is_on_the_node(
    mesh: KubeMesh, kube: Kube, node_a: str, node_b: str
) -> None:
    agent_a, agent_b = agent_of(mesh, node_a), agent_of(mesh, node_b)
    ns = kube.namespace("race")
    kube.service_account(ns, "ratings")
    identity = f"spiffe://{TD}/ns/{ns}/sa/ratings"
    kube.pod(ns, "ratings-1", service_account="ratings", node=node_a)

    def issue(agent: wire.Credential) -> grpc.RpcError | wire.Credential:
        try:
            return wire.issue(mesh.cp.address, mesh.cp.bundle_pem(), agent, impersonate=identity)
        except grpc.RpcError as exc:
            return exc

    wait_for("node A's workload SVID", lambda: isinstance(issue(agent_a), wire.Credential))
    err = issue(agent_b)
    assert isinstance(err, grpc.RpcError)
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED

    # Moved: deleted, and recreated on node B.
    kube.delete_pod(ns, "ratings-1")
    kube.pod(ns, "ratings-1", service_account="ratings", node=node_b)
    wait_for("node B's workload SVID", lambda: isinstance(issue(agent_b), wire.Credential))
    err = issue(agent_a)
    assert isinstance(err, grpc.RpcError)
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    # Node A is told about itself only; where the identity went is the audit log's to say.
    assert node_a in err.details()
    assert node_b not in err.details()
    audit = [json.loads(line) for line in mesh.cp.audit_path.read_text().splitlines()]
    last = [a for a in audit if a["identity"] == identity and a["outcome"] == "refused"][-1]
    assert last["caller"] == f"node/{node_a} (mtls)"
    assert last["reason"].endswith(f"(registered on node(s) {node_b})")

    # A finished pod holds no identity either.
    kube.core.patch_namespaced_pod_status("ratings-1", ns, {"status": {"phase": "Succeeded"}})
    wait_for(
        "the finished pod's identity refused", lambda: isinstance(issue(agent_b), grpc.RpcError)
    )


def test_survives_an_api_server_restart_and_catches_up(
    mesh: KubeMesh, kube: Kube, node_a: str
) -> None:
    cred = agent_of(mesh, node_a)
    states = States(mesh, cred)
    try:
        ns = kube.namespace("restart")
        kube.service_account(ns, "sa")
        kube.pod(ns, "before", service_account="sa", node=node_a)
        wait_for("the first pod", lambda: states.workload(ns, "before"))
        kube.cluster.stop_apiserver()
        try:
            # While it is away, the mesh keeps serving the last state.
            assert states.workload(ns, "before") is not None
            wire.issue(mesh.cp.address, mesh.cp.bundle_pem(), cred)  # renewal needs no API
        finally:
            kube.cluster.start_apiserver()
        kube.pod(ns, "after", service_account="sa", node=node_a)
        wait_for("the pod created after the restart", lambda: states.workload(ns, "after"), 120)
        kube.delete_pod(ns, "before")
        wait_for("the deletion after the restart", lambda: states.workload(ns, "before") is None)
        assert mesh.cp.running
    finally:
        states.close()


def test_node_agent_bootstraps_with_its_projected_token(
    mesh: KubeMesh, tmp_path: Path, node_a: str, node_b: str
) -> None:
    agent = kube_node_agent(tmp_path, mesh, node_a, mesh.agent_token(mesh.agent_pod(node_a)))
    try:
        agent.start()
        assert f"bootstrapped: node SVID spiffe://{TD}/meshward/node/{node_a}" in agent.log()
        assert "eyJ" not in agent.log()  # the token itself is never logged
    finally:
        agent.stop()
    # A token of an agent pod on another node: refused, one clear line, no traceback.
    other = kube_node_agent(tmp_path / "b", mesh, node_a, mesh.agent_token(mesh.agent_pod(node_b)))
    with pytest.raises(Exception, match=r"exited|not ready|timed out"):
        other.start()
    assert "bootstrap refused by the CA" in other.log()
    assert f"node/{node_b}" in other.log()
    assert "Traceback" not in other.log()
    other.stop()
