"""The TLS front door of the control plane's gRPC server.

grpcio's Python server can either require a client certificate or never ask for one; the CA needs
both on one port (join-token bootstrap has no certificate, renewal and discovery use the node SVID).
So TLS ends here, with the client certificate requested and verified against the trust bundle when
sent (`CERT_OPTIONAL`), and the bytes are relayed to the grpcio server on an internal loopback
port. Each relayed connection's local port maps to what the client proved (`PeerTable`); the
servicers look the caller up by `context.peer()`. A connection to the internal port that did not
come through here has no entry and is refused.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from dataclasses import dataclass
from typing import cast

from meshward_common.tls_files import load_cert_chain_pem

log = logging.getLogger(__name__)

# Pause reading from one side while the other side has this much unsent data.
_HIGH_WATER = 256 * 1024


@dataclass(frozen=True)
class PeerInfo:
    """What the TLS handshake proved: the client's leaf certificate (DER), if it sent one."""

    cert_der: bytes | None
    remote: str


class PeerTable:
    def __init__(self) -> None:
        self._by_port: dict[int, PeerInfo] = {}

    def add(self, port: int, info: PeerInfo) -> None:
        self._by_port[port] = info

    def remove(self, port: int) -> None:
        self._by_port.pop(port, None)

    def lookup(self, grpc_peer: str) -> PeerInfo | None:
        """`context.peer()` of the internal connection ("ipv4:127.0.0.1:PORT") -> PeerInfo."""
        if not grpc_peer.startswith("ipv4:127.0.0.1:"):
            return None
        try:
            return self._by_port.get(int(grpc_peer.rsplit(":", 1)[1]))
        except ValueError:
            return None

    def __len__(self) -> int:
        return len(self._by_port)


def server_ssl_context(chain_pem: bytes, key_pem: bytes, bundle_pem: str) -> ssl.SSLContext:
    """TLS 1.2+, ALPN h2, client certificate requested and verified against the bundle if sent."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    load_cert_chain_pem(ctx, chain_pem, key_pem)
    ctx.load_verify_locations(cadata=bundle_pem)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.set_alpn_protocols(["h2"])  # gRPC clients insist on h2
    return ctx


class _Side(asyncio.Protocol):
    """One end of a relayed connection; forwards what it receives to its peer side."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.other: _Side | None = None
        self.pending: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its interface.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        other = self.other
        if other is None or other.transport is None:
            self.pending.append(data)
            return
        other.transport.write(data)

    def pause_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.resume_reading()

    def eof_received(self) -> bool | None:
        if self.other is not None and self.other.transport is not None:
            if self.other.transport.can_write_eof():
                self.other.transport.write_eof()
            else:
                self.other.transport.close()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.close()


class _ClientSide(_Side):
    def __init__(self, door: TlsFrontDoor) -> None:
        super().__init__()
        self.door = door
        self.upstream_port: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        self.door.clients.add(self)
        self.transport.pause_reading()
        sslobj = transport.get_extra_info("ssl_object")
        cert = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
        peername = transport.get_extra_info("peername")
        remote = f"{peername[0]}:{peername[1]}" if peername else "?"
        task = asyncio.get_running_loop().create_task(self._connect(PeerInfo(cert, remote)))
        self.door.tasks.add(task)
        task.add_done_callback(self.door.tasks.discard)

    async def _connect(self, info: PeerInfo) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, upstream = await loop.create_connection(
                _Side, self.door.upstream_host, self.door.upstream_port
            )
        except OSError as exc:
            log.error("front door: cannot reach the gRPC server: %s", exc)
            if self.transport is not None:
                self.transport.close()
            return
        if self.transport is None or self.transport.is_closing():
            transport.close()
            return
        self.upstream_port = int(transport.get_extra_info("sockname")[1])
        self.door.peers.add(self.upstream_port, info)
        transport.set_write_buffer_limits(high=_HIGH_WATER)
        self.transport.set_write_buffer_limits(high=_HIGH_WATER)
        self.other, upstream.other = upstream, self
        # Either side may have spoken before the link existed (gRPC sends SETTINGS at once).
        for chunk in self.pending:
            transport.write(chunk)
        for chunk in upstream.pending:
            self.transport.write(chunk)
        self.pending.clear()
        upstream.pending.clear()
        self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        # Forget the mapping before the internal connection closes, so its port cannot be reused
        # by anyone while still mapped to this client's identity.
        if self.upstream_port is not None:
            self.door.peers.remove(self.upstream_port)
        self.door.clients.discard(self)
        super().connection_lost(exc)


class TlsFrontDoor:
    def __init__(self, ssl_context: ssl.SSLContext, upstream_host: str, upstream_port: int) -> None:
        self.ssl_context = ssl_context
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.peers = PeerTable()
        self.tasks: set[asyncio.Task[None]] = set()
        self.clients: set[_ClientSide] = set()
        self._server: asyncio.Server | None = None
        self._listen: tuple[str, int] | socket.socket = ("127.0.0.1", 0)

    async def start(self, host: str, port: int, sock: socket.socket | None = None) -> int:
        """Listen on host:port, or accept on `sock`, a listening socket shared with other workers
        (the kernel hands each connection to whichever worker accepts it first)."""
        self._listen = (host, port) if sock is None else sock
        await self._serve()
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        if isinstance(self._listen, socket.socket):
            # A duplicate: closing a server closes its socket, and replace_context needs it again.
            self._server = await loop.create_server(
                lambda: _ClientSide(self),
                sock=self._listen.dup(),
                ssl=self.ssl_context,
                ssl_handshake_timeout=10.0,
            )
            return
        host, port = self._listen
        self._server = await loop.create_server(
            lambda: _ClientSide(self),
            host,
            port,
            ssl=self.ssl_context,
            ssl_handshake_timeout=10.0,
            reuse_address=True,
            backlog=1024,
        )
        # A port given as 0 stays the one the kernel picked when the server is rebuilt.
        self._listen = self._server.sockets[0].dup()

    async def replace_context(self, ssl_context: ssl.SSLContext) -> None:
        """New handshakes use `ssl_context` (a trust bundle lost a root: an SSLContext can only
        gain CAs). Open connections keep theirs; connections waiting in the kernel's accept
        queue wait for the new server, as the listening socket itself stays open."""
        old, self.ssl_context = self._server, ssl_context
        await self._serve()
        if old is not None:
            old.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for client in list(self.clients):
                if client.transport is not None:
                    client.transport.close()
            await self._server.wait_closed()
        if isinstance(self._listen, socket.socket):
            self._listen.close()
