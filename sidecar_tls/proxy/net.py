"""Thin socket adapters for the data path: listeners, peeking, SO_ORIGINAL_DST, byte relays."""

from __future__ import annotations

import _ssl
import asyncio
import contextlib
import errno
import logging
import socket
import ssl
import struct
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from sidecar_tls.tls import PeerCerts

log = logging.getLogger(__name__)

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
STREAM_LIMIT = 256 * 1024
RELAY_CHUNK = 256 * 1024
# How long a sidecar waits for a client's first bytes before it takes the connection for a
# server-first protocol (MySQL, SMTP) and relays it as TCP. A short window misclassifies a slow
# HTTP client (a loaded node stalls a process between connect() and its first write) as TCP: no
# per-request policy, metrics or trace headers. Istio dropped its 100 ms window for this reason;
# we bound it, as Linkerd does (10 s), so that a server-first protocol still works after the wait.
FIRST_BYTES_TIMEOUT = 10.0

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
# The data path's protocols are plain (compiled) classes that have the protocol methods without
# subclassing asyncio's: uvloop and asyncio call them by name.
P = TypeVar("P")
_owned_by_transport: weakref.WeakSet[socket.socket] = weakref.WeakSet()


def original_dst(sock: socket.socket) -> tuple[str, int]:
    """The address the client connected to before iptables REDIRECT rewrote it; the socket's own
    address when no NAT happened (a direct connection)."""
    try:
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ENOPROTOOPT):
            raise
        host, port = sock.getsockname()[:2]
        return str(host), int(port)
    port, packed = struct.unpack_from("!2xH4s", raw)
    return socket.inet_ntoa(packed), int(port)


def listen_socket(host: str, port: int, backlog: int = 1024) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


async def serve_accepts(
    listener: socket.socket, handle: Callable[[socket.socket], Awaitable[None]]
) -> None:
    """Accept forever; each connection is handled by its own task, and no failure of one
    connection reaches the accept loop."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    async def guarded(conn: socket.socket) -> None:
        try:
            await handle(conn)
        except (ConnectionError, TimeoutError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        except RuntimeError as exc:
            # uvloop's way of saying the peer's transport is already closed
            if "handler is closed" not in str(exc):
                raise
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("connection handler failed")
        finally:
            # A socket handed to a transport belongs to it: closing the fd underneath would let
            # the next accept reuse the number while the event loop still watches the old one.
            if conn not in _owned_by_transport:
                with contextlib.suppress(OSError):
                    conn.close()

    try:
        while True:
            try:
                conn, _ = await loop.sock_accept(listener)
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error("accept failed: %s; pausing", exc)
                    await asyncio.sleep(0.1)
                    continue
                raise
            # One small write per request or frame batch each way: Nagle would hold it for the
            # previous ACK. Set here on every accepted socket (it is peeked at and may be
            # handshaken before a transport owns it); the event loop sets it on the connections
            # it makes (connect below).
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = asyncio.create_task(guarded(conn))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    finally:
        # Stopped: no new connections; the open ones are cancelled and may drain (an HTTP/2
        # connection says GOAWAY and lets its streams finish, bounded: sidecar_tls.draining) before we return.
        with contextlib.suppress(OSError):
            listener.close()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


async def peek(sock: socket.socket, n: int, wait_seconds: float) -> bytes:
    """Up to n bytes the client sent first, left in the socket; b"" if nothing came in time."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_reader(sock.fileno(), ready)
    try:
        await asyncio.wait_for(fut, wait_seconds)
    except TimeoutError:
        return b""
    finally:
        loop.remove_reader(sock.fileno())
    try:
        return sock.recv(n, socket.MSG_PEEK)
    except BlockingIOError:
        return b""


async def wrap_accepted(
    sock: socket.socket, ssl_context: ssl.SSLContext | None, handshake_timeout: float = 10.0
) -> Streams:
    """Streams over an accepted socket, terminating TLS when a context is given."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=STREAM_LIMIT)
    protocol = asyncio.StreamReaderProtocol(reader)
    _owned_by_transport.add(sock)
    if ssl_context is None:
        transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock)
    else:
        transport, _ = await loop.connect_accepted_socket(
            lambda: protocol, sock, ssl=ssl_context, ssl_handshake_timeout=handshake_timeout
        )
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


async def wrap_accepted_protocol(
    sock: socket.socket,
    ssl_context: ssl.SSLContext | None,
    protocol: object,
    handshake_timeout: float = 10.0,
) -> asyncio.Transport:
    """Hand an accepted socket (TLS terminated when a context is given) to a protocol."""
    loop = asyncio.get_running_loop()
    _owned_by_transport.add(sock)
    factory = cast(Callable[[], asyncio.BaseProtocol], lambda: protocol)
    if ssl_context is None:
        transport, _ = await loop.connect_accepted_socket(factory, sock)
    else:
        transport, _ = await loop.connect_accepted_socket(
            factory, sock, ssl=ssl_context, ssl_handshake_timeout=handshake_timeout
        )
    return transport  # uvloop's transports are alike, not asyncio.Transport subclasses


async def open_protocol(
    factory: Callable[[], P],
    host: str,
    port: int,
    within_seconds: float,
    **options: Any,
) -> tuple[asyncio.Transport, P]:
    """Connect to host:port with `factory`'s protocol (loop.create_connection's `options`: ssl,
    server_hostname, local_addr, ...), handshake included."""
    loop = asyncio.get_running_loop()
    transport, protocol = await asyncio.wait_for(
        loop.create_connection(
            cast(Callable[[], asyncio.BaseProtocol], factory), host, port, **options
        ),
        within_seconds,
    )
    return transport, cast(P, protocol)


def streams_over(transport: asyncio.Transport, buffered: bytes) -> Streams:
    """Switch a transport (reading paused) from its protocol to streams, keeping what the old
    protocol had already received."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=STREAM_LIMIT)
    protocol = asyncio.StreamReaderProtocol(reader)
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    if buffered:
        reader.feed_data(buffered)
    transport.resume_reading()
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


async def connect(
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    local_addr: tuple[str, int] | None = None,
    connect_seconds: float = 10.0,
) -> Streams:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(
            host,
            port,
            ssl=ssl_context,
            server_hostname=server_hostname if ssl_context is not None else None,
            local_addr=local_addr,
            limit=STREAM_LIMIT,
            ssl_handshake_timeout=connect_seconds if ssl_context is not None else None,
        ),
        connect_seconds,
    )
    return reader, writer  # TCP_NODELAY: the event loop's (see serve_accepts)


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    """Copy bytes until EOF; half-close the far side when the transport can (TLS cannot)."""
    total = 0
    try:
        while data := await reader.read(RELAY_CHUNK):
            total += len(data)
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, ssl.SSLError, OSError):
        pass
    return total


async def relay_both(a: Streams, b: Streams) -> tuple[int, int]:
    """Relay a <-> b until both directions end; returns (bytes a->b, bytes b->a)."""
    up = asyncio.create_task(pipe(a[0], b[1]))
    down = asyncio.create_task(pipe(b[0], a[1]))
    try:
        done, _ = await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        # TLS cannot half-close, so a client could wait for EOF forever: once the server side
        # has finished and closed, the exchange is over.
        if down in done:
            up.cancel()
        await asyncio.wait({up, down})
    finally:
        close(a[1])
        close(b[1])
    return (
        up.result() if not up.cancelled() else 0,
        down.result() if not down.cancelled() else 0,
    )


def close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.close()


def peer_certs(writer: asyncio.StreamWriter | asyncio.BaseTransport) -> PeerCerts:
    """The peer's leaf and the root its verified chain ends at. Python 3.11's ssl shows the
    verified chain only on its private `_sslobj` (public in 3.13: `get_verified_chain`)."""
    ssl_object = writer.get_extra_info("ssl_object")
    if ssl_object is None:
        return PeerCerts(None, None)
    leaf: bytes | None = ssl_object.getpeercert(binary_form=True)
    if leaf is None:
        return PeerCerts(None, None)
    chain = ssl_object._sslobj.get_verified_chain()
    anchor = chain[-1].public_bytes(_ssl.ENCODING_DER) if chain else None
    return PeerCerts(leaf, anchor)


def selected_alpn(writer: asyncio.StreamWriter | asyncio.BaseTransport) -> str | None:
    ssl_object = writer.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    alpn: str | None = ssl_object.selected_alpn_protocol()
    return alpn
