"""Attestation from kernel facts: SO_PEERCRED, /proc/<pid>/ns/net, uid, and pid-reuse guards."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meshward_common.errors import PermissionDenied
from meshward_common.registry import Selector, Workload
from node_agent.attestation import (
    PeerCred,
    PeerFacts,
    ProcReader,
    attest,
    attest_socket,
    gather_facts,
    peer_cred,
    peer_pidfd,
)

STAT = "{pid} (python3 (weird) name) S 1 1 1 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 {start} 1 1\n"


def fake_proc(tmp_path: Path, pid: int, uid: int, netns_name: str, start: int = 777) -> ProcReader:
    """A /proc tree with one process whose ns/net is the same inode as /run/netns/<netns_name>."""
    proc = tmp_path / "proc"
    run = tmp_path / "netns"
    (proc / str(pid) / "ns").mkdir(parents=True)
    (proc / "self" / "ns").mkdir(parents=True)
    run.mkdir()
    (proc / str(pid) / "stat").write_text(STAT.format(pid=pid, start=start))
    (proc / str(pid) / "status").write_text(f"Name:\tx\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")
    (proc / str(pid) / "cgroup").write_text("0::/user.slice/user-0.slice/session-1.scope\n")
    (proc / "self" / "ns" / "net").write_text("host ns")
    (run / "pod-b").write_text("another ns")
    target = run / netns_name if netns_name != "host" else proc / "self" / "ns" / "net"
    if not target.exists():
        target.write_text("pod ns")
    os.link(target, proc / str(pid) / "ns" / "net")
    return ProcReader(proc_root=proc, netns_dir=run)


def workload(
    name: str, netns: str, uids: tuple[int, ...] = (1337,), node: str = "node-1"
) -> Workload:
    return Workload(
        name=name, namespace="default", service_account=name, node=node,
        selector=Selector(netns=netns, uids=uids),
    )  # fmt: skip


REGISTRY = [
    workload("reviews", "pod-a"),
    workload("ratings", "pod-b"),
    workload("hosted", "host", uids=(1000,)),
    Workload(name="noselector", namespace="default", service_account="x", node="node-1"),
]


def test_caller_in_pod_namespace_with_registered_uid_gets_that_workload(tmp_path):
    proc = fake_proc(tmp_path, 4242, 1337, "pod-a")
    facts = gather_facts(PeerCred(4242, 1337, 1337), proc, None)
    assert attest(facts, REGISTRY, proc).name == "reviews"


def test_host_namespace_selector_matches_the_hosts_own_namespace(tmp_path):
    proc = fake_proc(tmp_path, 4242, 1000, "host")
    facts = gather_facts(PeerCred(4242, 1000, 1000), proc, None)
    assert attest(facts, REGISTRY, proc).name == "hosted"


def test_wrong_uid_in_the_right_namespace_is_denied(tmp_path):
    proc = fake_proc(tmp_path, 4242, 1000, "pod-a")
    facts = gather_facts(PeerCred(4242, 1000, 1000), proc, None)
    with pytest.raises(PermissionDenied, match="no registered workload"):
        attest(facts, REGISTRY, proc)


def test_unregistered_namespace_is_denied(tmp_path):
    proc = fake_proc(tmp_path, 4242, 1337, "pod-z")
    facts = gather_facts(PeerCred(4242, 1337, 1337), proc, None)
    with pytest.raises(PermissionDenied):
        attest(facts, REGISTRY, proc)


def test_two_workloads_matching_one_caller_is_refused_as_ambiguous(tmp_path):
    proc = fake_proc(tmp_path, 4242, 1337, "pod-a")
    facts = gather_facts(PeerCred(4242, 1337, 1337), proc, None)
    with pytest.raises(PermissionDenied, match="several"):
        attest(facts, [*REGISTRY, workload("twin", "pod-a")], proc)


def test_selector_naming_a_path_is_never_resolved(tmp_path):
    proc = fake_proc(tmp_path, 4242, 1337, "pod-a")
    assert proc.netns_named("../proc/4242/ns/net") is None
    assert proc.netns_named("missing") is None


def test_vanished_pid_is_denied(tmp_path):
    proc = fake_proc(tmp_path, 4242, 1337, "pod-a")
    with pytest.raises(PermissionDenied, match="vanished"):
        gather_facts(PeerCred(5555, 1337, 1337), proc, None)


def test_pid_without_pid_is_denied(tmp_path):
    proc = fake_proc(tmp_path, 4242, 1337, "pod-a")
    with pytest.raises(PermissionDenied, match="no pid"):
        gather_facts(PeerCred(0, 1337, 1337), proc, None)


class ReusedPid(ProcReader):
    """The process exits and another takes its pid between the two start-time reads."""

    def __init__(self, inner: ProcReader) -> None:
        super().__init__(inner.proc_root, inner.netns_dir)
        self.calls = 0

    def start_time(self, pid: int) -> int:
        self.calls += 1
        return 100 if self.calls == 1 else 200


def test_pid_reused_during_attestation_is_denied(tmp_path):
    proc = ReusedPid(fake_proc(tmp_path, 4242, 1337, "pod-a"))
    with pytest.raises(PermissionDenied, match="reused"):
        gather_facts(PeerCred(4242, 1337, 1337), proc, None)


def test_uid_changed_since_connect_is_denied(tmp_path):
    proc = fake_proc(tmp_path, 4242, 0, "pod-a")
    with pytest.raises(PermissionDenied, match="differs"):
        gather_facts(PeerCred(4242, 1337, 1337), proc, None)


def test_real_socket_peer_is_this_process_in_the_host_namespace():
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        cred = peer_cred(a)
        assert (cred.pid, cred.uid, cred.gid) == (os.getpid(), os.getuid(), os.getgid())
        facts = attest_socket(a, ProcReader())
    assert facts == PeerFacts(
        os.getpid(),
        os.getuid(),
        os.getgid(),
        ProcReader().netns_named("host") or (0, 0),
        Path("/proc/self/cgroup").read_text(),
    )
    hosted = workload("me", "host", uids=(os.getuid(),))
    assert attest(facts, [hosted], ProcReader()) == hosted


def test_caller_that_exited_before_attestation_is_denied(tmp_path):
    """SO_PEERPIDFD pins the connecting process: once it has exited, nothing of its pid is trusted."""
    path = tmp_path / "s.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(1)
    code = f"import socket; s=socket.socket(socket.AF_UNIX); s.connect({str(path)!r})"
    child = subprocess.Popen([sys.executable, "-c", code])
    conn, _ = server.accept()
    with server, conn:
        pidfd = peer_pidfd(conn)
        cred = peer_cred(conn)
        assert cred.pid == child.pid
        child.wait()
        time.sleep(0.05)
        with pytest.raises(PermissionDenied):
            gather_facts(cred, ProcReader(), pidfd)
        if pidfd is not None:
            os.close(pidfd)
