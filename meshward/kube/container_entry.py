"""The last step before a container's process: `python -m meshward.kube.container_entry SPEC`.

The node runner starts it already inside the pod's network namespace (`ip netns exec`, which also
binds the pod's hosts file over /etc/hosts) or, for hostNetwork pods, in a private mount namespace
(`unshare --mount`). Here, as a container runtime would before it execs the entrypoint:

1. join the container's cgroup (named as the kubelet names it: what node agents attest);
2. a fresh tmpfs on /var/run, the container's volumes bound beneath /var/run/secrets (read-only
   where asked) - in this process's mount namespace only, so nothing shows on the host, and the
   container sees none of the host's /run (sockets, netns files, other pods' state) but its own
   volumes. The sources are opened before the tmpfs hides them and bound from their descriptors;
3. drop to the container's uid/gid (no supplementary groups);
4. exec the command with exactly the container's environment.

SPEC is a JSON file the runner wrote (0600): {"argv", "env", "uid", "gid", "cgroup_fd",
"mounts": [{"source", "target", "read_only"}]}; `cgroup_fd` is the container cgroup's
cgroup.procs, opened by the runner and inherited (`ip netns exec` mounts a fresh /sys, which has
no cgroup file systems under it); `hosts_file` (hostNetwork pods) is bound over /etc/hosts. A failure is one line on stderr (the container's
log) and exit status 127, as a runtime that cannot start a container reports it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import sys
from pathlib import Path
from typing import Any

SECRETS_ROOT = "/var/run/secrets"
RUN_DIR = "/var/run"
O_PATH = 0o10000000  # Linux's; Python 3.11's os module names it only on some builds
EXIT_CANNOT_START = 127
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


class CannotStart(Exception):
    pass


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    done = _libc.mount(
        source.encode(),
        target.encode(),
        fstype.encode() if fstype else None,
        ctypes.c_ulong(flags),
        data.encode() if data else None,
    )
    if done != 0:
        errno = ctypes.get_errno()
        raise CannotStart(f"mount {source} on {target}: {os.strerror(errno)}")


def mount_volumes(mounts: list[dict[str, Any]]) -> None:
    # Our mounts must never propagate back to the host's namespace.
    _mount("none", "/", None, MS_REC | MS_PRIVATE)
    opened: list[tuple[int, dict[str, Any]]] = []
    for m in mounts:
        target = str(m["target"])
        if not target.startswith(SECRETS_ROOT + "/"):
            raise CannotStart(f"mountPath {target} is not under {SECRETS_ROOT}/")
        try:
            fd = os.open(str(m["source"]), getattr(os, "O_PATH", O_PATH) | os.O_DIRECTORY)
        except OSError as exc:
            raise CannotStart(f"volume source {m['source']}: {exc.strerror}") from exc
        opened.append((fd, m))
    _mount("tmpfs", os.path.realpath(RUN_DIR), "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=16m")
    for fd, m in opened:
        target = str(m["target"])
        os.makedirs(target, exist_ok=True)
        _mount(f"/proc/self/fd/{fd}", target, None, MS_BIND | MS_REC)
        if m.get("read_only"):
            flags = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV
            _mount("none", target, None, flags)
        os.close(fd)


def enter(spec: dict[str, Any]) -> None:
    fd = int(spec["cgroup_fd"])
    os.write(fd, f"{os.getpid()}\n".encode())
    os.close(fd)
    mount_volumes(list(spec.get("mounts") or []))
    if spec.get("hosts_file"):  # a hostNetwork pod: the runner's hosts file (netns pods have
        _mount(str(spec["hosts_file"]), "/etc/hosts", None, MS_BIND)  # ip netns exec's)
    uid, gid = int(spec["uid"]), int(spec["gid"])
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    os.chdir("/")
    argv = [str(a) for a in spec["argv"]]
    env = {str(k): str(v) for k, v in (spec.get("env") or {}).items()}
    os.execve(argv[0], argv, env)  # noqa: S606 - becoming the container's process


def main(args: list[str]) -> int:
    if len(args) != 1:
        print("usage: python -m meshward.kube.container_entry SPEC.json", file=sys.stderr)
        return 2
    try:
        spec = json.loads(Path(args[0]).read_text())
        enter(spec)
    except (OSError, ValueError, KeyError, TypeError, CannotStart) as exc:
        print(f"node runner: cannot start the container: {exc}", file=sys.stderr)
    return EXIT_CANNOT_START


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
