"""The one front door: what the kernel or TLS says about a caller, for a gRPC server that cannot see it.

grpcio never shows a servicer its peer's credentials (`context.peer()` is "unix:" or a loopback
address). So the CA (TLS on 15012, client certificate optional) and the node agent (the Workload
API's Unix socket, attested by SO_PEERCRED) each put this door in front of an internal gRPC server
on 127.0.0.1: per accepted connection it learns who the caller is (`identify`), binds a loopback
source port, registers what it learned under that port in a `PeerTable`, connects to the gRPC
server from that port and relays the bytes. A servicer looks its caller up by `context.peer()`; a
connection that did not come through the door has no entry.

When a relayed connection ends, its mapping is removed *before* the internal connection closes:
after the close the port is free, and a process that bound it in between would inherit the
caller's identity.

The door also bounds what unauthenticated callers can hold (`DoorLimits`): a connection is refused
at accept, before its TLS handshake, when its source or the door is at its cap; a handshake has a
deadline; a connection from which nothing arrives for the idle timeout is closed (an honest gRPC
client answers the server's keepalive pings, so it is never idle that long).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import ssl
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from meshward_common.errors import ConfigError
from meshward_common.refusal_log import RefusalLog

log = logging.getLogger(__name__)

T = TypeVar("T")

# Pause reading from one side while the other side has this much unsent data.
_HIGH_WATER = 256 * 1024
_LOOPBACK_PEER = "ipv4:127.0.0.1:"
# Descriptors one relayed connection holds in the process: the caller's socket, the door's end
# of the internal connection and the gRPC server's end.
DESCRIPTORS_PER_CONNECTION = 3


def loopback_port(grpc_peer: str) -> int | None:
    """The port of a gRPC `context.peer()` such as "ipv4:127.0.0.1:40000", or None."""
    if not grpc_peer.startswith(_LOOPBACK_PEER):
        return None
    text = grpc_peer[len(_LOOPBACK_PEER) :]
    return int(text) if text.isdigit() else None


class PeerTable(Generic[T]):
    """Loopback source port of a relayed connection -> what the door learned about its caller.

    A miss is None, never an exception: whether an unknown caller is unauthenticated (the CA) or
    not entitled (the Workload API) is the servicer's to say.
    """

    def __init__(self) -> None:
        self._by_port: dict[int, T] = {}

    def register(self, port: int, value: T) -> None:
        self._by_port[port] = value

    def unregister(self, port: int) -> None:
        self._by_port.pop(port, None)

    def lookup(self, grpc_peer: str) -> T | None:
        port = loopback_port(grpc_peer)
        return self._by_port.get(port) if port is not None else None

    def __len__(self) -> int:
        return len(self._by_port)


@dataclass(frozen=True)
class DoorLimits:
    """What callers may hold. None: no limit of that kind."""

    handshake_timeout: float = 10.0  # TLS handshake, from accept
    idle_timeout: float | None = None  # nothing received from the caller for this long: closed
    max_connections: int = 4096
    max_per_source: int | None = None  # per source address (a Unix socket has one source)


def listening_socket(host: str, port: int, what: str = "listen") -> socket.socket:
    """A listening socket every worker inherits: the kernel hands each connection to whichever
    worker accepts first. `what` names the setting in the one-line error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family, backlog=1024)
    except OSError as exc:
        raise ConfigError(f"{what}: cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.set_inheritable(True)
    return sock


def raise_descriptor_limit() -> int:
    """Raise this process's soft descriptor limit to its hard limit; the new soft limit.

    The soft default (often 1024) is a few hundred relayed connections; the hard limit is what an
    administrator allowed, and a server that holds connections should use it.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == resource.RLIM_INFINITY or soft >= hard:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:
        log.warning("cannot raise the descriptor limit from %d to %d: %s", soft, hard, exc)
        return soft
    return hard


class FrontDoor(Generic[T]):
    """Accepts callers, learns who they are with `identify`, relays them to `upstream_port`.

    `identify(transport)` runs once the connection is up (after the TLS handshake when
    `ssl_context` is given) and returns what servicers will look up; it must not block.
    """

    def __init__(
        self,
        upstream_port: int,
        identify: Callable[[asyncio.BaseTransport], T],
        *,
        ssl_context: ssl.SSLContext | None = None,
        limits: DoorLimits | None = None,
        peers: PeerTable[T] | None = None,
        name: str = "front door",
    ) -> None:
        self.upstream_port = upstream_port
        self.identify = identify
        self.ssl_context = ssl_context
        self.limits = limits or DoorLimits()
        self.name = name
        self.peers: PeerTable[T] = peers if peers is not None else PeerTable()
        self.refusals = RefusalLog(log)
        self._per_source: dict[str, int] = {}
        self._held = 0  # admitted connections, from accept (before TLS) to their end
        self._links: set[_Link[T]] = set()
        self._listener: socket.socket | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def connections(self) -> int:
        return self._held

    async def start_tcp(self, host: str, port: int, sock: socket.socket | None = None) -> int:
        """Listen on host:port (or on an already listening `sock`); returns the port."""
        if sock is None:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(1024)
        self._serve(sock)
        return int(sock.getsockname()[1])

    async def start_unix(self, path: str) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        sock.listen(1024)
        self._serve(sock)

    def _serve(self, listener: socket.socket) -> None:
        listener.setblocking(False)
        self._listener = listener
        self._spawn(self._accept_forever(listener))

    def use_ssl_context(self, ssl_context: ssl.SSLContext) -> None:
        """New handshakes use `ssl_context` (a new certificate, or a bundle that lost a root: an
        SSLContext can only gain CAs); open connections keep the one they were made with."""
        self.ssl_context = ssl_context

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for link in list(self._links):
            link.finish()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        if self._listener is not None:
            self._listener.close()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept_forever(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, address = await loop.sock_accept(listener)
            except OSError as exc:  # EMFILE/ENFILE under a flood: wait for descriptors to free
                self.refusals.refused("accept", f"{self.name}: cannot accept: {exc.strerror}")
                await asyncio.sleep(0.1)
                continue
            source = str(address[0]) if isinstance(address, tuple) and address else "local"
            if not self._admit(source):
                conn.close()  # before any TLS: a refusal costs the door next to nothing
                continue
            self._spawn(self._connect(conn, source))

    async def _connect(self, conn: socket.socket, source: str) -> None:
        link = _Link(self, source)
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: link,
                conn,
                ssl=self.ssl_context,
                ssl_handshake_timeout=(
                    self.limits.handshake_timeout if self.ssl_context is not None else None
                ),
            )
        except (OSError, ssl.SSLError, ConnectionError, TimeoutError) as exc:
            # A failed or abandoned handshake is the caller's business: no traceback, no noise.
            log.debug("%s: connection from %s dropped: %r", self.name, source, exc)
            conn.close()
            link.finish()
        except asyncio.CancelledError:  # the door is closing
            conn.close()
            link.finish()
            raise

    # -- bookkeeping ---------------------------------------------------------------------------

    def _admit(self, source: str) -> bool:
        limits = self.limits
        held = self._per_source.get(source, 0)
        if self._held >= limits.max_connections:
            reason = f"the door holds {self._held} connections (its cap)"
        elif limits.max_per_source is not None and held >= limits.max_per_source:
            reason = f"{source} holds {held} connections (the cap per source)"
        else:
            self._held += 1
            self._per_source[source] = held + 1
            return True
        self.refusals.refused(source, f"{self.name}: connection from {source} refused: {reason}")
        return False

    def release(self, source: str) -> None:
        self._held -= 1
        left = self._per_source.get(source, 1) - 1
        if left > 0:
            self._per_source[source] = left
        else:
            self._per_source.pop(source, None)


class _Link(asyncio.Protocol, Generic[T]):
    """One caller's connection and, once it is identified, its relay to the gRPC server."""

    def __init__(self, door: FrontDoor[T], source: str) -> None:
        self.door = door
        self.source = source
        self.client: asyncio.Transport | None = None
        self.upstream: _Upstream[T] | None = None
        self.port: int | None = None  # registered loopback source port
        self.finished = False
        self.pending: list[bytes] = []  # what the caller sent before the relay was up
        self.last_received = 0.0
        self._idle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None

    # -- the caller's side ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its interface.
        self.client = cast(asyncio.Transport, transport)
        self.client.pause_reading()  # until the relay is up
        self.door._links.add(self)
        self._task = asyncio.get_running_loop().create_task(self._open())

    async def _open(self) -> None:
        door, loop = self.door, asyncio.get_running_loop()
        assert self.client is not None
        try:
            facts = door.identify(self.client)
            upstream_sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                upstream_sock.bind(("127.0.0.1", 0))
                self.port = int(upstream_sock.getsockname()[1])
                # Nagle + delayed ACK would add ~40 ms to every new connection's first message.
                upstream_sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                upstream_sock.setblocking(False)
                # Registered before connecting: the gRPC server may read the first request as
                # soon as the connection exists.
                door.peers.register(self.port, facts)
                await loop.sock_connect(upstream_sock, ("127.0.0.1", door.upstream_port))
                _, upstream = await loop.create_connection(
                    lambda: _Upstream(self), sock=upstream_sock
                )
            except BaseException:
                upstream_sock.close()
                raise
        except OSError as exc:
            log.warning("%s: cannot reach the internal gRPC server: %s", door.name, exc)
            self.finish()
            return
        except asyncio.CancelledError:
            self.finish()
            raise
        if self.finished:
            if upstream.transport is not None:
                upstream.transport.close()
            return
        self.upstream = upstream
        assert upstream.transport is not None
        for chunk in self.pending:
            upstream.transport.write(chunk)
        self.pending.clear()
        self.client.set_write_buffer_limits(high=_HIGH_WATER)
        self.last_received = loop.time()
        self._arm_idle()
        self.client.resume_reading()

    def data_received(self, data: bytes) -> None:
        self.last_received = asyncio.get_running_loop().time()
        upstream = self.upstream
        if upstream is not None and upstream.transport is not None:
            upstream.transport.write(data)
        else:
            self.pending.append(data)  # only what one read delivered before the pause

    def eof_received(self) -> bool | None:
        self.finish()  # gRPC never half-closes a connection it still uses: end both sides
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.finish()

    def pause_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.resume_reading()

    # -- both sides -------------------------------------------------------------------------------

    def _arm_idle(self) -> None:
        idle = self.door.limits.idle_timeout
        if idle is not None and not self.finished:
            when = self.last_received + idle
            self._idle = asyncio.get_running_loop().call_at(when, self._check_idle)

    def _check_idle(self) -> None:
        idle = self.door.limits.idle_timeout
        assert idle is not None
        if asyncio.get_running_loop().time() - self.last_received >= idle:
            log.debug(
                "%s: connection from %s idle for %.0fs: closed", self.door.name, self.source, idle
            )
            self.finish()
        else:
            self._arm_idle()

    def finish(self) -> None:
        """End the relay: forget the caller's mapping first, then close both sides."""
        if self.port is not None:
            self.door.peers.unregister(self.port)
            self.port = None
        if self.finished:
            return
        self.finished = True
        self.door._links.discard(self)
        self.door.release(self.source)
        if self._idle is not None:
            self._idle.cancel()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()
        if self.client is not None:
            self.client.close()


class _Upstream(asyncio.Protocol, Generic[T]):
    """The door's end of the internal connection to the gRPC server."""

    def __init__(self, link: _Link[T]) -> None:
        self.link = link
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=_HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        client = self.link.client
        if client is not None:
            client.write(data)

    def eof_received(self) -> bool | None:
        self.link.finish()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.link.finish()

    def pause_writing(self) -> None:
        if self.link.client is not None:
            self.link.client.pause_reading()

    def resume_writing(self) -> None:
        if self.link.client is not None:
            self.link.client.resume_reading()
