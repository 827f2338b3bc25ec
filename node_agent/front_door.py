"""The attesting front door: the public Unix socket, in front of the internal gRPC server.

Why a front door: grpcio never shows a servicer the peer's credentials (`context.peer()` is just
"unix:"), so identity cannot be established inside the gRPC server. The alternative, one socket per
pod reachable only from that pod, needs a mount per pod and breaks as soon as two pods share a
filesystem view (here they all share the host's). So the agent owns the public socket: for every
accepted connection it reads the kernel's facts (SO_PEERCRED, SO_PEERPIDFD, /proc) once, then relays
the connection's bytes to the internal grpc.aio server on 127.0.0.1:<ephemeral> from a TCP source
port it bound and registered *before* connecting. The servicer looks its caller up by that port in
`PeerTable`; a port it does not know (say, a host process dialing the internal port directly) gets
PERMISSION_DENIED. A connection whose attestation failed is still relayed, registered with no facts,
so the client receives a proper PERMISSION_DENIED status instead of a dropped connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from pathlib import Path

from meshward_common.errors import ConfigError, PermissionDenied
from node_agent.attestation import PeerFacts, ProcReader, attest_socket

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024


class PeerTable:
    """Source port of a relayed connection -> the facts attested for it (None: attestation failed)."""

    def __init__(self) -> None:
        self._by_port: dict[int, PeerFacts | None] = {}

    def register(self, port: int, facts: PeerFacts | None) -> None:
        self._by_port[port] = facts

    def unregister(self, port: int) -> None:
        self._by_port.pop(port, None)

    def lookup_peer(self, peer: str) -> PeerFacts:
        """Facts for a grpc `context.peer()` string ("ipv4:127.0.0.1:PORT")."""
        host, _, port_text = peer.rpartition(":")
        if host not in ("ipv4:127.0.0.1",) or not port_text.isdigit():
            raise PermissionDenied(f"caller {peer} did not come through the Workload API socket")
        port = int(port_text)
        if port not in self._by_port:
            raise PermissionDenied(f"caller {peer} did not come through the Workload API socket")
        facts = self._by_port[port]
        if facts is None:
            raise PermissionDenied("caller could not be attested (see the agent log)")
        return facts

    def __len__(self) -> int:
        return len(self._by_port)


def prepare_socket_path(path: Path) -> None:
    """Make the socket's directory; refuse a path another live process is serving on."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"socket directory {path.parent}: cannot create: {exc.strerror}") from exc
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_socket():
        raise ConfigError(
            f"socket path {path} exists and is not a socket; remove it or pick another"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()  # stale: left by an agent that died without cleaning up
        return
    finally:
        probe.close()
    raise ConfigError(f"socket path {path} is in use by another process (another agent running?)")


class FrontDoor:
    def __init__(
        self,
        socket_path: Path,
        upstream_port: int,
        peers: PeerTable,
        proc: ProcReader | None = None,
    ) -> None:
        self.socket_path = socket_path
        self.upstream_port = upstream_port
        self.peers = peers
        self.proc = proc or ProcReader()
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        prepare_socket_path(self.socket_path)
        self._server = await asyncio.start_unix_server(self._on_connect, path=str(self.socket_path))
        # Any local uid may connect (sidecars run as 1337, apps as others): attestation, not file
        # permissions, decides what a caller gets.
        os.chmod(self.socket_path, 0o777)  # noqa: S103

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        # Closing the streams ends every relay; cancelling the handler tasks instead would make
        # asyncio's stream callback log the CancelledError as an error.
        for w in list(self._writers):
            w.close()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self._relay(reader, writer)
        finally:
            if task is not None:
                self._tasks.discard(task)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        self._writers.add(writer)
        facts: PeerFacts | None
        try:
            facts = attest_socket(sock, self.proc)
        except (PermissionDenied, OSError) as exc:
            log.info("caller not attested: %s", exc)
            facts = None
        upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        port = 0
        try:
            upstream.bind(("127.0.0.1", 0))
            port = upstream.getsockname()[1]
            # Without this, Nagle + delayed ACK add ~40 ms to every new connection's handshake
            # (measured: 43 ms -> 6 ms per connect + first message).
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            upstream.setblocking(False)
            self.peers.register(port, facts)
            await asyncio.get_running_loop().sock_connect(
                upstream, ("127.0.0.1", self.upstream_port)
            )
            up_reader, up_writer = await asyncio.open_connection(sock=upstream)
        except OSError as exc:
            log.warning("cannot reach the internal Workload API server: %s", exc)
            self.peers.unregister(port)
            self._writers.discard(writer)
            upstream.close()
            writer.close()
            return
        self._writers.add(up_writer)
        try:
            await _pipe_both(reader, writer, up_reader, up_writer)
        finally:
            self.peers.unregister(port)
            self._writers.discard(writer)
            self._writers.discard(up_writer)


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    while True:
        data = await src.read(_CHUNK)
        if not data:
            return
        dst.write(data)
        await dst.drain()


async def _pipe_both(
    a_reader: asyncio.StreamReader,
    a_writer: asyncio.StreamWriter,
    b_reader: asyncio.StreamReader,
    b_writer: asyncio.StreamWriter,
) -> None:
    # gRPC never half-closes a connection it still uses: when either side ends, end both.
    tasks = [
        asyncio.create_task(_pipe(a_reader, b_writer)),
        asyncio.create_task(_pipe(b_reader, a_writer)),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        for w in (a_writer, b_writer):
            w.close()
            with contextlib.suppress(Exception):
                await w.wait_closed()
