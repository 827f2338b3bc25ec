"""A real control plane (`python -m meshward ca serve`) as a subprocess, for tests.

    with run_control_plane(tmp_path, REGISTRY_YAML) as cp:
        token = cp.join_token("node-1")          # single use, bound to node-1
        channel to cp.address with roots cp.bundle_path, target name "meshward-control-plane"
        cp.registry_path.write_text(...)         # the CA reloads it (and streams new MeshState)
        cp.stop(); cp.start()                    # restart on the same port and state

It listens on a free loopback port, is waited for until it prints its ready line, and is always
terminated on exit. `.log()` returns its output (stdout and stderr).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.harness.process import REPO, LoggedProcess

READY_LINE = "meshward ca: serving on"
SERVER_NAME = "meshward-control-plane"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ControlPlane(LoggedProcess):
    def __init__(
        self,
        tmp_path: Path,
        registry_yaml: str,
        *,
        trust_domain: str = "cluster.local",
        workload_ttl: str = "24h",
        max_ttl: str | None = None,
        policy_dir: Path | None = None,
        plugin_ca_dir: Path | None = None,
        extra_args: tuple[str, ...] = (),
        startup_timeout: float = 30.0,
    ) -> None:
        # Unique per instance: a test may run several control planes in one tmp_path.
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(dir=tmp_path, prefix="control-plane-"))
        self.state_dir = self.root / "state"
        self.registry_path = self.root / "registry.yaml"
        self.registry_path.write_text(registry_yaml)
        self.bundle_path = self.state_dir / "trust-bundle.pem"
        self.audit_path = self.state_dir / "audit.log"
        self.trust_domain = trust_domain
        self.workload_ttl = workload_ttl
        self.max_ttl = max_ttl or _longer_of(workload_ttl, "24h")
        self.policy_dir = policy_dir
        self.plugin_ca_dir = plugin_ca_dir
        self.extra_args = extra_args
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        super().__init__("control plane", self.root / "ca.log", READY_LINE, startup_timeout)

    def argv(self) -> list[str]:
        args = [
            sys.executable, "-m", "meshward", "ca", "serve",
            "--listen", self.address,
            "--state-dir", str(self.state_dir),
            "--trust-domain", self.trust_domain,
            "--registry", str(self.registry_path),
            "--workload-ttl", self.workload_ttl,
            "--max-ttl", self.max_ttl,
            *self.extra_args,
        ]  # fmt: skip
        if self.policy_dir is not None:
            args += ["--policy-dir", str(self.policy_dir)]
        if self.plugin_ca_dir is not None:
            args += ["--plugin-ca-dir", str(self.plugin_ca_dir)]
        return args

    def start(self) -> None:
        self.launch(self.argv())

    def join_token(self, node: str, ttl: str = "1h") -> str:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "meshward",
                "ca",
                "join-token",
                "--node",
                node,
                "--state-dir",
                str(self.state_dir),
                "--ttl",
                ttl,
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()

    def worker_pids(self) -> list[int]:
        """The supervisor's worker processes (`meshward ca serve --workers N`)."""
        assert self.proc is not None
        return _children(self.proc.pid)

    def connections_per_worker(self, port: int | None = None) -> dict[int, int]:
        """How many established connections to the TLS port (or `port`) each worker holds (from
        /proc)."""
        established = _established_inodes(self.port if port is None else port)
        return {pid: len(_socket_inodes(pid) & established) for pid in self.worker_pids()}

    def bundle_pem(self) -> bytes:
        return self.bundle_path.read_bytes()

    def write_registry(self, registry_yaml: str) -> None:
        """Replace the registry atomically (the CA never sees a half-written file)."""
        tmp = self.registry_path.with_suffix(".tmp")
        tmp.write_text(registry_yaml)
        os.replace(tmp, self.registry_path)


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            out.extend(int(c) for c in (task / "children").read_text().split())
    return sorted(out)


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    return inodes


def _established_inodes(port: int) -> set[str]:
    """Inodes of ESTABLISHED TCP sockets whose local port is `port` (server sides)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as fh:
            next(fh)
            for line in fh:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port == port and fields[3] == "01":
                    inodes.add(fields[9])
    return inodes


def _longer_of(a: str, b: str) -> str:
    from meshward_common.durations import parse_duration

    return a if parse_duration(a) >= parse_duration(b) else b


@contextlib.contextmanager
def run_control_plane(
    tmp_path: Path,
    registry_yaml: str,
    *,
    trust_domain: str = "cluster.local",
    workload_ttl: str = "24h",
    max_ttl: str | None = None,
    policy_dir: Path | None = None,
    plugin_ca_dir: Path | None = None,
    extra_args: tuple[str, ...] = (),
) -> Iterator[ControlPlane]:
    cp = ControlPlane(
        tmp_path,
        registry_yaml,
        trust_domain=trust_domain,
        workload_ttl=workload_ttl,
        max_ttl=max_ttl,
        policy_dir=policy_dir,
        plugin_ca_dir=plugin_ca_dir,
        extra_args=extra_args,
    )
    try:
        cp.start()
        yield cp
    finally:
        cp.stop()
