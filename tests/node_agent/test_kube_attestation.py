"""Attestation on Kubernetes: the kubelet's pod cgroups, for Pods that exist in the API server.

The table reads the kubelet's naming for both cgroup drivers. The real tests mount a cgroup v2
hierarchy of their own, create cgroups named as the kubelet names them, put a process of a real
pod network namespace in them, and attest it with the node agent's own code (pid-reuse guard
included) against the mesh state the control plane builds from the API.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ca.kube.mesh import registry_from_cluster, sidecar_container_id
from meshward_common import registry
from meshward_common.errors import PermissionDenied
from meshward_common.ports import PROXY_CONTAINER
from node_agent.attestation import PeerCred, ProcReader, attest, gather_facts
from node_agent.kube_attestation import PodCgroup, match_pod, pod_of_cgroup
from tests.harness.kube import Kube
from tests.harness.kubelet import cgroup2_hierarchy, cgroups_made, container_cgroup, in_cgroup

UID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
CID = "ab" * 32

CGROUPS = [
    (f"0::/kubepods/burstable/pod{UID}/{CID}\n", PodCgroup(UID, CID)),
    (f"0::/kubepods/pod{UID}/{CID}\n", PodCgroup(UID, CID)),
    (f"0::/kubepods/besteffort/pod{UID}\n", PodCgroup(UID, "")),
    (
        "0::/kubepods.slice/kubepods-burstable.slice/"
        f"kubepods-burstable-pod{UID.replace('-', '_')}.slice/cri-containerd-{CID}.scope\n",
        PodCgroup(UID, CID),
    ),
    (
        f"0::/kubepods.slice/kubepods-pod{UID.replace('-', '_')}.slice/crio-{CID}.scope\n",
        PodCgroup(UID, CID),
    ),
    (f"4:memory:/kubepods/burstable/pod{UID}/{CID}\n0::/\n", PodCgroup(UID, CID)),  # v1 host
    ("0::/user.slice/user-0.slice/session-1.scope\n", None),
    (f"0::/system.slice/pod{UID}\n", None),  # not under kubepods
    (f"0::/kubepods/burstable/pod{UID}/{CID}/nested\n", None),  # not the kubelet's layout
    (f"0::/kubepods/burstable/pod{UID}/not-a-container\n", None),
    ("", None),
]


@pytest.mark.parametrize(("text", "want"), CGROUPS)
def test_pod_of_cgroup(text: str, want: PodCgroup | None) -> None:
    assert pod_of_cgroup(text) == want


# -- real cgroups, real pod network namespaces, Pods in the API server --------------------------

PREFIX = "h16k"


@pytest.fixture
def cgroup2(tmp_path: Path) -> Iterator[Path]:
    with cgroup2_hierarchy(tmp_path / "cgroup2") as root:
        yield root


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"{PREFIX}-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@contextlib.contextmanager
def process_in(netns: str, uid: int, cgroup: Path | None) -> Iterator[int]:
    """A process in the pod's network namespace as `uid`, in `cgroup` (made as the kubelet names
    it) from its start, cleaned up afterwards."""
    argv = ["ip", "netns", "exec", netns, "setpriv", f"--reuid={uid}", f"--regid={uid}",
            "--clear-groups", "sleep", "120"]  # fmt: skip
    with cgroups_made(cgroup):
        proc = subprocess.Popen(in_cgroup(cgroup, argv))
        try:
            deadline = time.monotonic() + 10
            while Path(f"/proc/{proc.pid}/status").read_text().find(f"Uid:\t{uid}\t") < 0:
                assert time.monotonic() < deadline, "the process did not drop to its uid"
                time.sleep(0.02)
            yield proc.pid
        finally:
            proc.kill()
            proc.wait()


def node_workloads(kube: Kube, node: str):
    """What the node agent's mesh state holds for `node`: the control plane's view of the API."""
    pods = {
        f"{p['metadata']['namespace']}/{p['metadata']['name']}": p
        for p in kube.api.sanitize_for_serialization(kube.core.list_pod_for_all_namespaces().items)
    }
    return registry_from_cluster(pods, {}, {}).on_node(node)


def attest_pid(pid: int, uid: int, kube: Kube, node: str):
    proc = ProcReader()
    facts = gather_facts(PeerCred(pid, uid, uid), proc, None)
    return attest(facts, node_workloads(kube, node), proc)


@pytest.mark.netns
def test_sidecar_in_a_pod_cgroup_gets_its_pods_identity(
    kube: Kube, cgroup2: Path, netns: str
) -> None:
    ns, node, other = kube.namespace("att"), kube.node(), kube.node()
    kube.service_account(ns, "reviews")
    pod = kube.pod(ns, "reviews-1", service_account="reviews", node=node)
    cg = container_cgroup(cgroup2, pod)
    with process_in(netns, 1337, cg) as pid:
        assert f"pod{pod['uid'].replace('-', '_')}" in Path(f"/proc/{pid}/cgroup").read_text()
        w = attest_pid(pid, 1337, kube, node)
        assert (w.namespace, w.name, w.service_account) == (ns, "reviews-1", "reviews")
        assert w.sidecar_container_id == pod["containers"][PROXY_CONTAINER]
        # The same process, asked about on another node: its Pod is not there.
        with pytest.raises(PermissionDenied, match="not a running Pod on this node"):
            attest_pid(pid, 1337, kube, other)
        # Deleted: the Pod is gone from the API, so is the identity.
        kube.delete_pod(ns, "reviews-1")
        with pytest.raises(PermissionDenied, match="not a running Pod on this node"):
            attest_pid(pid, 1337, kube, node)


@pytest.mark.netns
def test_the_app_container_and_processes_outside_pods_get_nothing(
    kube: Kube, cgroup2: Path, netns: str
) -> None:
    ns, node = kube.namespace("att"), kube.node()
    kube.service_account(ns, "ratings")
    pod = kube.pod(ns, "ratings-1", service_account="ratings", node=node)
    app = container_cgroup(cgroup2, pod, "app")
    for uid in (1000, 1337):  # the app's container, whatever its uid
        with process_in(netns, uid, app) as pid, pytest.raises(PermissionDenied, match="not its"):
            attest_pid(pid, uid, kube, node)
    # The sidecar's container, but not the sidecar's uid.
    sidecar = container_cgroup(cgroup2, pod)
    with process_in(netns, 1000, sidecar) as pid, pytest.raises(PermissionDenied, match="uid 1000"):
        attest_pid(pid, 1000, kube, node)
    # In the pod's network namespace as uid 1337, but in no pod's cgroup.
    with process_in(netns, 1337, None) as pid, pytest.raises(PermissionDenied, match="no regis"):
        attest_pid(pid, 1337, kube, node)


def _workload(sidecar: str) -> registry.Workload:
    return registry.Workload("r-1", "ns", "sa", "node-1", pod_uid=UID, sidecar_container_id=sidecar)


@pytest.mark.parametrize(
    ("cgroup", "uid", "sidecar", "refusal"),
    [
        (PodCgroup(UID, CID), 1337, CID, None),
        (PodCgroup(UID, ""), 1337, CID, "in no container"),  # the pod's cgroup itself
        (PodCgroup(UID, CID), 1337, "", "no istio-proxy container in its status"),  # not yet
        (PodCgroup(UID, "cd" * 32), 1337, CID, "not its istio-proxy container"),
        (PodCgroup(UID, CID), 0, CID, "runs as uid 0"),
        (PodCgroup("1" * 8 + UID[8:], CID), 1337, CID, "not a running Pod on this node"),
    ],
)
def test_match_pod_wants_the_sidecar_container_and_uid(
    cgroup: PodCgroup, uid: int, sidecar: str, refusal: str | None
) -> None:
    if refusal is None:
        assert match_pod(42, uid, cgroup, [_workload(sidecar)]).name == "r-1"
        return
    with pytest.raises(PermissionDenied, match=refusal):
        match_pod(42, uid, cgroup, [_workload(sidecar)])


@pytest.mark.parametrize(
    ("status", "want"),
    [
        ({"containerStatuses": [{"name": "app", "containerID": "containerd://aa"},
                                {"name": "istio-proxy", "containerID": f"containerd://{CID}"}]}, CID),
        ({"containerStatuses": [{"name": "istio-proxy", "containerID": f"meshward://{CID}"}]}, CID),
        ({"containerStatuses": [{"name": "istio-proxy", "state": {"waiting": {}}}]}, ""),
        ({"containerStatuses": [{"name": "app", "containerID": f"docker://{CID}"}]}, ""),
        ({}, ""),
    ],
)  # fmt: skip
def test_the_sidecar_container_id_comes_from_the_pod_status(
    status: dict[str, Any], want: str
) -> None:
    assert sidecar_container_id(status) == want
