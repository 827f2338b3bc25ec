"""The kubelet-named cgroups of the development node runner's pods: where cgroup v2 is mounted,
and how a pod's cgroups are emptied and removed (also by `make down` for a runner that died)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from meshward.kube.pod_plan import Unsupported


def cgroup2_root() -> Path:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or .../unified on hybrid hosts)."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        if right.split()[:1] == ["cgroup2"] and fields[3] == "/":
            return Path(fields[4])
    raise Unsupported("no cgroup v2 hierarchy is mounted on this host")


def remove_cgroups(containers: list[str], pod: str) -> None:
    """Kill whatever is still in the containers' cgroups, then remove them and the pod's (its
    parents, kubepods/<qos> and kubepods, only when no other pod is left in them)."""
    root = cgroup2_root()
    for cg in containers:
        path = root / cg
        for _ in range(50):
            try:
                pids = (path / "cgroup.procs").read_text().split()
            except OSError:
                break
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            time.sleep(0.05)
        with contextlib.suppress(OSError):
            path.rmdir()
    here = root / pod
    while here != root and here.name:
        try:
            here.rmdir()
        except OSError:
            break
        here = here.parent
