"""A real node agent (`python -m meshward agent run`) as a subprocess, for tests.

    with run_control_plane(tmp_path, registry_yaml) as cp:
        with run_node_agent(tmp_path, cp, node="node-1", workload_ttl="30s") as agent:
            source = X509Source(socket_path=agent.endpoint)

The agent bootstraps with a fresh join token from `control_plane.join_token(node)` on its first
start; `.stop()` then `.start()` restarts it on the same state dir and socket (no new token needed:
it still holds its node SVID). It is always terminated on exit. `.log()` returns its output.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

REPO = Path(__file__).resolve().parents[2]
READY_LINE = "meshward agent: serving Workload API on"


class ControlPlaneLike(Protocol):
    address: str
    bundle_path: Path

    def join_token(self, node: str) -> str: ...


def short_socket_path(node: str) -> Path:
    """Unix socket paths must stay under 108 bytes; pytest's tmp_path can be longer."""
    directory = Path(tempfile.mkdtemp(prefix="mwna-"))
    directory.chmod(0o755)  # callers in pods run as other uids and must reach the socket
    return directory / f"{node}.sock"


class NodeAgent:
    def __init__(
        self,
        tmp_path: Path,
        control_plane: ControlPlaneLike,
        node: str,
        workload_ttl: str,
        extra_args: tuple[str, ...] = (),
        startup_timeout: float = 30.0,
    ) -> None:
        self.control_plane = control_plane
        self.node = node
        self.workload_ttl = workload_ttl
        self.state_dir = tmp_path / f"agent-{node}"
        self.socket_path = short_socket_path(node)
        self.endpoint = f"unix://{self.socket_path}"
        self.log_path = tmp_path / f"agent-{node}.log"
        self.extra_args = extra_args
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self._bootstrapped = False

    def argv(self) -> list[str]:
        args = [
            sys.executable, "-m", "meshward", "agent", "run",
            "--node", self.node,
            "--ca-address", self.control_plane.address,
            "--state-dir", str(self.state_dir),
            "--socket", str(self.socket_path),
            "--trust-bundle", str(self.control_plane.bundle_path),
            "--workload-ttl", self.workload_ttl,
            *self.extra_args,
        ]  # fmt: skip
        if not self._bootstrapped:
            # A file (0600), not argv: a token on the command line is visible in `ps`.
            token_file = self.state_dir.with_name(f"agent-{self.node}.token")
            fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self.control_plane.join_token(self.node))
            args += ["--join-token-file", str(token_file)]
        return args

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv(), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        self._wait_ready()
        self._bootstrapped = True

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout
        start_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        while time.monotonic() < deadline:
            text = self.log_path.read_bytes()[start_offset:].decode(errors="replace")
            if READY_LINE in text and self.socket_path.exists():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"node agent exited ({self.proc.returncode}):\n{self.log()}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"node agent not ready after {self.startup_timeout}s:\n{self.log()}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """Stop without a clean shutdown (SIGKILL): the socket file stays behind."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


@contextlib.contextmanager
def run_node_agent(
    tmp_path: Path,
    control_plane: Any,
    node: str = "node-1",
    *,
    workload_ttl: str = "24h",
    extra_args: tuple[str, ...] = (),
) -> Iterator[NodeAgent]:
    agent = NodeAgent(tmp_path, control_plane, node, workload_ttl, extra_args)
    try:
        agent.start()
        yield agent
    finally:
        agent.stop()
        shutil.rmtree(agent.socket_path.parent, ignore_errors=True)
