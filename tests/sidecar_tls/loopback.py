"""Loopback rigs for the data-path tests: a header-echoing HTTP app, a line-echo TCP app, and
an outbound + inbound sidecar pair wired together without iptables (destinations injected)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from policy.engine import Decision, RuleMatch
from sidecar_tls.answers import REQUEST_TIMEOUT_S
from sidecar_tls.authz import InboundAuthorizer
from sidecar_tls.destinations import MeshSnapshot, MeshWorkload, resolve_destination
from sidecar_tls.identity import StaticSvidSource, WorkloadIdentity
from sidecar_tls.proxy.inbound import InboundProxy
from sidecar_tls.proxy.net import listen_socket, serve_accepts
from sidecar_tls.proxy.outbound import OutboundProxy
from sidecar_tls.state import SidecarState
from sidecar_tls.telemetry.observe import HopObserver

CLIENT_ID = "spiffe://cluster.local/ns/default/sa/client"
SERVER_ID = "spiffe://cluster.local/ns/default/sa/server"


async def http_echo_app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers every request with a JSON body of the request line and headers it received."""
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            lines = head.decode("latin-1").split("\r\n")
            headers: dict[str, list[str]] = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers.setdefault(name.strip().lower(), []).append(value.strip())
            length = int(headers.get("content-length", ["0"])[0])
            body = await reader.readexactly(length) if length else b""
            payload = json.dumps(
                {"request": lines[0], "headers": headers, "body": body.decode()}
            ).encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                + str(len(payload)).encode()
                + b"\r\n\r\n"
                + payload
            )
            await writer.drain()
    finally:
        writer.close()


async def line_echo_app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while line := await reader.readline():
            writer.write(b"echo: " + line)
            await writer.drain()
    finally:
        writer.close()


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def silent_app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads whatever comes and never answers (an app stuck in a request)."""
    try:
        while await reader.read(65536):
            pass
    finally:
        writer.close()


class GatedApp:
    """Answers each request only once `release` is set; `received` says a request arrived."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.received = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                self.received.set()
                await self.release.wait()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nconnection: keep-alive\r\ncontent-length: "
                    + str(len(self.body)).encode()
                    + b"\r\n\r\n"
                    + self.body
                )
                await writer.drain()
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def serve_app(handler: Handler) -> AsyncIterator[int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


@contextlib.asynccontextmanager
async def run_listener(
    handle: Callable[[socket.socket], Awaitable[None]],
) -> AsyncIterator[int]:
    sock = listen_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    task = asyncio.create_task(serve_accepts(sock, handle))
    try:
        yield port
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def refused(port: int, within_s: float = 30.0) -> None:
    """Until the listener on `port` refuses connections (a stopping proxy has closed it)."""
    async with asyncio.timeout(within_s):
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except ConnectionRefusedError:
                return
            writer.close()
            await asyncio.sleep(0.05)


class ModeAuthorizer(InboundAuthorizer):
    """The real adapter's interface with a fixed mTLS mode and an optional deny list."""

    def __init__(self, mode: str = "STRICT", deny_paths: tuple[str, ...] = ()) -> None:
        super().__init__("default", {})
        self._mode = mode
        self._deny = deny_paths

    def mtls_mode(self, port: int):  # type: ignore[no-untyped-def]
        return self._mode

    def applies(self) -> bool:
        return bool(self._deny)  # as the real one: no policy, no check

    def check(self, req):  # type: ignore[no-untyped-def]
        if req.path in self._deny:
            return Decision(False, "denied by test", RuleMatch("test", "DENY", 0, "test"))
        return Decision(True, "allowed")


def snapshot(server_id: str = SERVER_ID, address: str = "127.0.0.1") -> MeshSnapshot:
    return MeshSnapshot(
        version="1",
        workloads=(MeshWorkload("server", "default", "server", server_id, address, "server", ()),),
    )


@dataclass
class Pair:
    outbound_port: int
    inbound_port: int
    app_port: int
    client_state: SidecarState
    server_state: SidecarState
    outbound: OutboundProxy
    inbound: InboundProxy
    client_svids: StaticSvidSource
    server_svids: StaticSvidSource
    extra: dict[str, object] = field(default_factory=dict)


@contextlib.asynccontextmanager
async def sidecar_pair(
    client_identity: WorkloadIdentity,
    server_identity: WorkloadIdentity,
    app: Handler = http_echo_app,
    *,
    mode: str = "STRICT",
    expected_server_id: str = SERVER_ID,
    deny_paths: tuple[str, ...] = (),
    observer: HopObserver | None = None,
    app_port: int | None = None,
    request_timeout: float = REQUEST_TIMEOUT_S,
) -> AsyncIterator[Pair]:
    """`app_port`: an app already listening there (a gRPC server) instead of `app`."""
    client_svids = StaticSvidSource(client_identity)
    server_svids = StaticSvidSource(server_identity)
    client_state = SidecarState(client_svids, snapshot(expected_server_id))
    server_state = SidecarState(server_svids, snapshot(expected_server_id))
    async with contextlib.AsyncExitStack() as stack:
        if app_port is None:
            app_port = await stack.enter_async_context(serve_app(app))
        inbound = InboundProxy(
            server_state,
            ModeAuthorizer(mode, deny_paths),
            pod_ip="127.0.0.1",
            workload="server",
            namespace="default",
            observer=observer,
            original_dst=lambda _s: ("127.0.0.1", app_port),
            request_timeout=request_timeout,
        )
        async with run_listener(inbound.handle) as inbound_port:
            outbound = OutboundProxy(
                client_state,
                workload="client",
                namespace="default",
                observer=observer,
                destination_for=lambda _s: resolve_destination(
                    client_state.snapshot, "127.0.0.1", inbound_port
                ),
                request_timeout=request_timeout,
            )
            async with run_listener(outbound.handle) as outbound_port:
                yield Pair(
                    outbound_port,
                    inbound_port,
                    app_port,
                    client_state,
                    server_state,
                    outbound,
                    inbound,
                    client_svids,
                    server_svids,
                )
            outbound.pool.close_all()


async def http_get(
    port: int, path: str = "/", headers: dict[str, str] | None = None, host: str = "127.0.0.1"
) -> tuple[int, bytes]:
    """One plain HTTP/1.1 request on a new connection (the app's plain client)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        writer.write(
            f"GET {path} HTTP/1.1\r\nhost: server\r\n{extra}connection: close\r\n\r\n".encode()
        )
        await writer.drain()
        data = await reader.read()
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    return status, body
