"""Who is calling: kernel facts about a Unix-socket peer, matched against the registry.

The facts come only from the kernel, never from the caller: pid/uid/gid from SO_PEERCRED, the pid's
network namespace from /proc/<pid>/ns/net (its inode identifies the namespace; a named namespace
is the bind mount /run/netns/<name>; "host" is the agent's own, /proc/self/ns/net: the agent runs
in the node's namespace, and /proc/1 may be unreadable in a sandbox).

Pid reuse (SPIRE's peertracker problem): between the connect() the kernel recorded and our reads of
/proc/<pid>, the caller may exit and another process may take its pid, and we would attest the
wrong process. Two guards, strongest first:
  - SO_PEERPIDFD (Linux >= 6.5) gives a pidfd for the exact process that connected. After reading
    /proc/<pid> we check, through the pidfd, that this process is still alive: a live process still
    owns its pid, so what we read was its own. Race-free.
  - Otherwise (older kernels), like peertracker: read the process start time from /proc/<pid>/stat
    before and after the reads and refuse if it changed or the process is gone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from meshward_common import registry
from meshward_common.errors import PermissionDenied
from node_agent.kube_attestation import match_pod, pod_of_cgroup

# Linux's SO_PEERPIDFD; Python 3.11's socket module does not name it.
SO_PEERPIDFD = 77


@dataclass(frozen=True)
class PeerCred:
    pid: int
    uid: int
    gid: int


@dataclass(frozen=True)
class PeerFacts:
    """What the kernel says about a caller, checked against pid reuse."""

    pid: int
    uid: int
    gid: int
    netns: tuple[int, int]  # (st_dev, st_ino) of the caller's network namespace
    cgroup: str = ""  # /proc/<pid>/cgroup: on Kubernetes, names the caller's pod


def peer_cred(sock: socket.socket) -> PeerCred:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return PeerCred(pid, uid, gid)


def peer_pidfd(sock: socket.socket) -> int | None:
    """A pidfd for the process that connected, or None where the kernel cannot give one."""
    try:
        return sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
    except OSError:
        return None


class ProcReader:
    """Reads the facts under a /proc root (a fake tree in tests)."""

    def __init__(self, proc_root: Path = Path("/proc"), netns_dir: Path = Path("/run/netns")):
        self.proc_root = proc_root
        self.netns_dir = netns_dir

    def start_time(self, pid: int) -> int:
        """Field 22 of /proc/<pid>/stat (clock ticks after boot); the comm field may hold spaces."""
        text = (self.proc_root / str(pid) / "stat").read_text()
        after_comm = text[text.rindex(")") + 2 :].split()
        return int(after_comm[19])

    def uids(self, pid: int) -> tuple[int, int]:
        """(real, effective) uid of the pid from /proc/<pid>/status."""
        for line in (self.proc_root / str(pid) / "status").read_text().splitlines():
            if line.startswith("Uid:"):
                fields = line.split()
                return int(fields[1]), int(fields[2])
        raise ValueError(f"no Uid line in {self.proc_root}/{pid}/status")

    def cgroup(self, pid: int) -> str:
        return (self.proc_root / str(pid) / "cgroup").read_text()

    def netns_of_pid(self, pid: int) -> tuple[int, int]:
        st = os.stat(self.proc_root / str(pid) / "ns" / "net")
        return st.st_dev, st.st_ino

    def netns_named(self, name: str) -> tuple[int, int] | None:
        """The namespace a registry selector names, or None if it does not exist (yet)."""
        path = (
            self.proc_root / "self" / "ns" / "net"
            if name == registry.HOST_NETNS
            else self.netns_dir / name
        )
        if name != registry.HOST_NETNS and ("/" in name or name in ("", ".", "..")):
            return None
        try:
            st = os.stat(path)
        except OSError:
            return None
        return st.st_dev, st.st_ino


def _alive(pidfd: int) -> bool:
    try:
        signal.pidfd_send_signal(pidfd, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, we just may not signal it
    return True


def gather_facts(cred: PeerCred, proc: ProcReader, pidfd: int | None) -> PeerFacts:
    """Read the caller's namespace and uid, refusing if the pid may have been reused meanwhile."""
    if cred.pid <= 0:
        raise PermissionDenied("peer has no pid (connected from another pid namespace?)")
    try:
        before = proc.start_time(cred.pid)
        netns = proc.netns_of_pid(cred.pid)
        _real, effective = proc.uids(cred.pid)
        cgroup = proc.cgroup(cred.pid)
        after = proc.start_time(cred.pid)
    except (OSError, ValueError, IndexError) as exc:
        raise PermissionDenied(f"caller pid {cred.pid} vanished during attestation: {exc}") from exc
    if before != after:
        raise PermissionDenied(f"caller pid {cred.pid} was reused during attestation")
    if pidfd is not None and not _alive(pidfd):
        raise PermissionDenied(f"caller pid {cred.pid} exited during attestation")
    if effective != cred.uid:
        # SO_PEERCRED holds the uid at connect(); a different uid now means another process
        # (or a setuid since): do not guess which one to believe.
        raise PermissionDenied(
            f"caller pid {cred.pid}: uid {effective} now differs from uid {cred.uid} at connect"
        )
    return PeerFacts(pid=cred.pid, uid=cred.uid, gid=cred.gid, netns=netns, cgroup=cgroup)


def attest_socket(sock: socket.socket, proc: ProcReader) -> PeerFacts:
    cred = peer_cred(sock)
    pidfd = peer_pidfd(sock)
    try:
        return gather_facts(cred, proc, pidfd)
    finally:
        if pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(pidfd)


def match_workload(
    facts: PeerFacts,
    workloads: Iterable[registry.Workload],
    netns_of: dict[str, tuple[int, int] | None],
) -> registry.Workload:
    """The one workload whose selector the facts satisfy; PermissionDenied otherwise.

    `netns_of` maps each selector's netns name to its (dev, inode), or None if it does not exist.
    Two matching workloads is ambiguous and refused: a caller gets one identity or none.
    """
    matches = [
        w
        for w in workloads
        if w.selector is not None
        and netns_of.get(w.selector.netns) == facts.netns
        and facts.uid in w.selector.uids
    ]
    if not matches:
        raise PermissionDenied(
            f"no registered workload for caller pid {facts.pid} uid {facts.uid} "
            f"in netns inode {facts.netns[1]}"
        )
    if len(matches) > 1:
        names = ", ".join(f"{w.namespace}/{w.name}" for w in matches)
        raise PermissionDenied(f"caller pid {facts.pid} matches several workloads: {names}")
    return matches[0]


def attest(
    facts: PeerFacts, workloads: Iterable[registry.Workload], proc: ProcReader
) -> registry.Workload:
    pod = pod_of_cgroup(facts.cgroup)
    if pod is not None:
        # In a kubelet pod cgroup: the Pod decides (Kubernetes); no netns selector applies.
        return match_pod(facts.pid, facts.uid, pod, workloads)
    items = [w for w in workloads if w.selector is not None]
    names = {w.selector.netns for w in items if w.selector is not None}
    return match_workload(facts, items, {n: proc.netns_named(n) for n in names})
