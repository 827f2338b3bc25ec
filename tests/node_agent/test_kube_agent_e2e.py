"""A node of the mesh on Kubernetes, for real: the API server, `meshward ca serve --kubernetes`,
`meshward agent run --kubernetes` (bootstrapped by its ServiceAccount token), and pods as a kubelet
would run them here: real network namespaces with istio-init's rules, each process in the cgroup
the kubelet names after its Pod and container, as the container's uid.

- Through the agent's Workload API socket, an unmodified `spiffe` client in the Pod's istio-proxy
  container (uid 1337) gets the Pod's SVID; one in no pod's cgroup, in the app's container, in a
  Pod bound to another node, or in a Pod since deleted gets PERMISSION_DENIED.
- A DENY AuthorizationPolicy created with the API takes a running sidecar from 200 to 403, and
  deleting it back to 200.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from meshward_common.ports import PROXY_UID
from tests.harness.kube import Kube, KubeMesh, kube_control_plane, kube_node_agent, wait_for
from tests.harness.kubelet import cgroup2_hierarchy, cgroups_made, container_cgroup, in_cgroup
from tests.harness.pods import Pod, PodNetwork, add_intercepted_pod, pod_network
from tests.sidecar_tls.test_tracing_pods import clean_env

pytestmark = [pytest.mark.netns, pytest.mark.slow]

PREFIX, SUBNET = "h16e", "10.213.192.0/24"
REPO = Path(__file__).resolve().parents[2]
APP_UID = 1000
TD = "cluster.local"

# An unmodified SPIFFE client: the `spiffe` package's WorkloadApiClient, nothing of ours.
FETCH = r"""
import json, sys
from spiffe import WorkloadApiClient
from spiffe.workloadapi.errors import FetchX509SvidError
try:
    with WorkloadApiClient(socket_path=sys.argv[1]) as client:
        svid = client.fetch_x509_svid(timeout=20)
    print(json.dumps({"code": "OK", "id": str(svid.spiffe_id)}))
except FetchX509SvidError as exc:
    cause = exc.__cause__
    code = cause.code().name if hasattr(cause, "code") else "?"
    print(json.dumps({"code": code, "details": str(exc)}))
"""


@dataclass
class KubeNode:
    """One node: its Node object, its agent, the pods' network and the cgroup hierarchy."""

    kube: Kube
    mesh: KubeMesh
    net: PodNetwork
    agent: Any
    name: str
    cgroups: Path
    tmp: Path
    _made: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, pod: Pod, api_pod: dict[str, Any], container: str, argv: list[str],
              uid: int, log: str) -> subprocess.Popen[bytes]:  # fmt: skip
        """A container's process, as the kubelet starts it: in its cgroup, the pod's network
        namespace, its uid. Stopped (and its cgroup removed) when the node is torn down."""
        cgroup = container_cgroup(self.cgroups, api_pod, container)
        self._made.enter_context(cgroups_made(cgroup))
        with (self.tmp / f"{log}.log").open("wb") as out:
            proc = subprocess.Popen(
                in_cgroup(cgroup, self.net.command(pod, argv, uid=uid)),
                env=clean_env(), stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                start_new_session=True,
            )  # fmt: skip
        self._procs.append(proc)
        return proc

    def fetch_svid(
        self, pod: Pod, cgroup: Path | None, uid: int = PROXY_UID, script: str = FETCH
    ) -> dict[str, Any]:
        """One FetchX509SVID from the agent's socket by a process in `pod`'s network namespace,
        in `cgroup` (None: in no pod's cgroup), as `uid`; `script` (a SPIFFE client taking the
        socket as its argument, printing JSON last) for another call."""
        argv = self.net.command(pod, [sys.executable, "-c", script, self.agent.endpoint], uid=uid)
        with cgroups_made(cgroup):
            done = subprocess.run(
                in_cgroup(cgroup, argv), env=clean_env(), capture_output=True, text=True,
                timeout=60, check=False, cwd=REPO,
            )  # fmt: skip
        try:
            answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            return {"code": "NO ANSWER", "details": done.stderr[-800:]}
        return answer

    def logs(self) -> str:
        parts = [f"== {p.name}\n{p.read_text(errors='replace')[-1500:]}"
                 for p in sorted(self.tmp.glob("*.log"))]  # fmt: skip
        return "\n".join([*parts, "== agent", self.agent.log()[-3000:],
                          "== ca", self.mesh.cp.log()[-2000:]])  # fmt: skip

    def stop(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        self._made.close()


@pytest.fixture
def node(kube: Kube, tmp_path: Path) -> Iterator[KubeNode]:
    with (
        cgroup2_hierarchy(tmp_path / "cgroup2") as cgroups,
        kube_control_plane(kube, tmp_path / "cp") as mesh,
        pod_network(PREFIX, SUBNET) as net,
    ):
        name = kube.node("n")
        token = mesh.agent_token(mesh.agent_pod(name))
        agent = kube_node_agent(tmp_path / "agent", mesh, name, token)
        logs = tmp_path / "logs"
        logs.mkdir()
        n = KubeNode(kube, mesh, net, agent, name, cgroups, logs)
        try:
            agent.start()
            yield n
        finally:
            n.stop()
            agent.stop()
            shutil.rmtree(agent.socket_path.parent, ignore_errors=True)


def test_only_the_pods_sidecar_container_gets_its_svid_through_the_socket(
    node: KubeNode, kube: Kube
) -> None:
    ns = kube.namespace("wl")
    kube.service_account(ns, "reviews")
    pod = node.net.add_pod("reviews")
    reviews = kube.pod(ns, "reviews-1", service_account="reviews", node=node.name, ip=pod.ip)
    sidecar = container_cgroup(node.cgroups, reviews)

    # The agent learns of the Pod from the control plane's stream within seconds.
    got = wait_for(
        "the sidecar's SVID",
        lambda: (a := node.fetch_svid(pod, sidecar))["code"] == "OK" and a,
    )
    assert got["id"] == f"spiffe://{TD}/ns/{ns}/sa/reviews"

    # The same network namespace and uid, but in no pod's cgroup.
    assert node.fetch_svid(pod, None)["code"] == "PERMISSION_DENIED"
    # The app's container of the same Pod, even as uid 1337.
    assert node.fetch_svid(pod, container_cgroup(node.cgroups, reviews, "app"))["code"] == (
        "PERMISSION_DENIED"
    )
    # The sidecar's container, but not the sidecar's uid.
    assert node.fetch_svid(pod, sidecar, uid=APP_UID)["code"] == "PERMISSION_DENIED"
    # A Pod bound to another node: this node's agent has nothing to give it.
    elsewhere = kube.pod(ns, "reviews-2", service_account="reviews", node=kube.node("o"))
    denied = node.fetch_svid(pod, container_cgroup(node.cgroups, elsewhere))
    assert denied["code"] == "PERMISSION_DENIED"
    assert "not a running Pod on this node" in node.agent.log()

    # Deleted: once the agent hears of it, the Pod's sidecar gets nothing more.
    kube.delete_pod(ns, "reviews-1")
    wait_for(
        "the deleted Pod's SVID refused",
        lambda: node.fetch_svid(pod, sidecar)["code"] == "PERMISSION_DENIED",
    )


def test_a_deny_policy_from_the_api_takes_a_sidecar_from_200_to_403_and_back(
    node: KubeNode, kube: Kube
) -> None:
    net = node.net
    ns = kube.namespace("shop")
    pods: dict[str, tuple[Pod, dict[str, Any]]] = {}
    for app in ("productpage", "reviews"):
        kube.service_account(ns, app)
        pod = add_intercepted_pod(net, app)
        api_pod = kube.pod(
            ns, f"{app}-1", service_account=app, node=node.name, labels={"app": app}, ip=pod.ip
        )
        pods[app] = (pod, api_pod)
    reviews, reviews_api = pods["reviews"]
    kube.service(ns, "reviews", reviews_api, reviews.ip, 9080)

    for app, (pod, api_pod) in pods.items():
        sidecar = [
            sys.executable, "-m", "meshward", "sidecar", "run",
            "--agent-socket", str(node.agent.socket_path), "--pod-ip", pod.ip,
            "--workload", api_pod["name"], "--namespace", ns,
        ]  # fmt: skip
        node.start(pod, api_pod, "istio-proxy", sidecar, PROXY_UID, f"sidecar-{app}")
    server = [sys.executable, "-m", "tests.sidecar_tls.pod_apps", "http-server", "9080"]
    node.start(reviews, reviews_api, "app", server, APP_UID, "app-reviews")

    productpage = pods["productpage"][0]
    url = f"http://{reviews.ip}:9080/reviews/1"

    def status() -> int:
        done = net.run(
            productpage,
            [sys.executable, "-m", "tests.sidecar_tls.pod_apps", "http-get", url],
            uid=APP_UID, env={**clean_env(), "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        try:
            return int(json.loads(done.stdout)["status"])
        except (ValueError, KeyError):
            return 0

    def answered(code: int) -> Any:
        return lambda: status() == code

    try:
        wait_for("200 through both sidecars", answered(200))
        kube.policy(
            ns, "deny-productpage",
            {
                "selector": {"matchLabels": {"app": "reviews"}},
                "action": "DENY",
                "rules": [{"from": [{"source": {"principals": [f"{TD}/ns/{ns}/sa/productpage"]}}]}],
            },
        )  # fmt: skip
        wait_for("403 once the DENY policy is in the API", answered(403))
        kube.delete_policy(ns, "deny-productpage")
        wait_for("200 again once it is deleted", answered(200))
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{node.logs()}") from None
