"""What a kubelet does for a Pod's processes, for tests that run them on this host: cgroups named
as the kubelet names them (systemd driver, containerd, cgroup v2), and processes started inside
them, in the pod's network namespace, as the container's uid.

The tests mount a cgroup v2 hierarchy of their own (`cgroup2_hierarchy`; the host may have only
v1, and a second mount of cgroup2 is the same single hierarchy); every cgroup they make has a
fresh Pod's uid in its path, so tests never share one, and is removed afterwards.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from meshward_common.ports import PROXY_CONTAINER


@contextlib.contextmanager
def cgroup2_hierarchy(where: Path) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "cgroup2", "none", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def container_cgroup(root: Path, pod: dict[str, Any], container: str = PROXY_CONTAINER) -> Path:
    """The cgroup the kubelet gives one of a Pod's containers (`pod` as `Kube.pod` returns it)."""
    slice_ = f"kubepods-besteffort-pod{pod['uid'].replace('-', '_')}.slice"
    scope = f"cri-containerd-{pod['containers'][container]}.scope"
    return root / "kubepods.slice" / "kubepods-besteffort.slice" / slice_ / scope


@contextlib.contextmanager
def cgroups_made(cgroup: Path | None) -> Iterator[Path | None]:
    """`cgroup` and its missing parents, created, and removed again (once empty) on exit."""
    made: list[Path] = []
    try:
        if cgroup is not None:
            for parent in reversed([cgroup, *cgroup.parents]):
                if not parent.exists():
                    parent.mkdir()
                    made.append(parent)
        yield cgroup
    finally:
        for path in reversed(made):
            with contextlib.suppress(OSError):  # a parent another test still uses stays
                path.rmdir()


def in_cgroup(cgroup: Path | None, argv: Sequence[str]) -> list[str]:
    """`argv`, run by a shell (as root) that first moves itself into `cgroup`; exec keeps the pid,
    so the process the kernel reports is in the cgroup from its first instruction on."""
    if cgroup is None:
        return list(argv)
    return ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(cgroup), *argv]
