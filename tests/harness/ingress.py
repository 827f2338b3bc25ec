"""The mesh's ingress gateway (`python -m meshward sidecar ingress`) on the host, as uid 1337 (the
identity's selector: `{netns: host, uids: [1337]}`), for tests:

    with run_ingress(tmp_path, agent.socket_path, "productpage:9080") as ingress:
        urllib.request.urlopen(f"http://127.0.0.1:{ingress.port}/productpage")

It listens on a free loopback port; started means it printed its ready line (it has its SVID),
not that the mesh state has reached it yet: callers retry their first request. Always stopped
(SIGTERM) on exit; `.log()` returns its output.
"""

from __future__ import annotations

import contextlib
import socket
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from meshward_common import ports
from tests.harness.process import LoggedProcess

READY_LINE = "ingress on 127.0.0.1:"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class HostIngress(LoggedProcess):
    def __init__(
        self, tmp_path: Path, agent_socket: Path, route: str, extra_args: Sequence[str] = ()
    ) -> None:
        self.port = free_port()
        self.argv = [
            "setpriv", "--reuid", str(ports.PROXY_UID), "--regid", str(ports.PROXY_GID),
            "--clear-groups", "--",
            sys.executable, "-m", "meshward", "sidecar", "ingress",
            "--listen", f"127.0.0.1:{self.port}",
            "--agent-socket", str(agent_socket),
            "--route", route,
            *extra_args,
        ]  # fmt: skip
        log = tmp_path / f"ingress-{route.replace(':', '-')}.log"
        super().__init__(f"ingress to {route}", log, READY_LINE, startup_timeout=60)

    def start(self) -> None:
        self.launch(self.argv)


@contextlib.contextmanager
def run_ingress(
    tmp_path: Path, agent_socket: Path, route: str, extra_args: Sequence[str] = ()
) -> Iterator[HostIngress]:
    ingress = HostIngress(tmp_path, agent_socket, route, extra_args)
    try:
        ingress.start()
        yield ingress
    finally:
        ingress.stop()
