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
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from tests.harness.process import LoggedProcess

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


class NodeAgent(LoggedProcess):
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
        self.extra_args = extra_args
        super().__init__("node agent", tmp_path / f"agent-{node}.log", READY_LINE, startup_timeout)
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
        self.launch(self.argv(), also_ready=self.socket_path.exists)
        self._bootstrapped = True


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
