"""Outbound (15001): the app's intercepted connections, carried to the peer over verified mTLS.

Per connection: recover the original destination, resolve it against the mesh snapshot, sniff
HTTP/1.x vs other TCP. HTTP is handled per request on pooled mTLS connections (trace headers,
keep-alive); other TCP gets its own mTLS connection, checked the same way, then bytes are relayed.
Destinations outside the mesh pass through in plaintext (ALLOW_ANY) or are refused (REGISTRY_ONLY).
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import replace

from meshward_common import ports
from meshward_common.errors import InvalidRequest, MeshwardError
from sidecar_tls.destinations import Destination, OutboundPolicy, resolve_destination
from sidecar_tls.http1 import (
    Framing,
    looks_like_http,
    parse_request_head,
    rewrite_headers,
    serialize_request,
    simple_response,
)
from sidecar_tls.http_stream import UpstreamClosed, exchange, read_head
from sidecar_tls.net import Streams, close, connect, original_dst, peek, relay_both, wrap_accepted
from sidecar_tls.observe import Hop, HopObserver, NoopObserver
from sidecar_tls.pool import ConnectionPool, Upstream
from sidecar_tls.state import SidecarState
from sidecar_tls.tls import ALPN_HTTP, ALPN_TCP

log = logging.getLogger(__name__)

# Client-first protocols send their first bytes at once; server-first ones (SMTP, MySQL) send
# nothing, so after this long the connection is treated as plain TCP (Envoy's listener timeout).
SNIFF_TIMEOUT = 0.1
_UPSTREAM_ERRORS = (MeshwardError, OSError, ssl.SSLError, TimeoutError)
_OWN_PORTS = frozenset({ports.OUTBOUND, ports.INBOUND, ports.ADMIN, ports.HEALTH})

DestinationFor = Callable[[socket.socket], Destination | None]


class OutboundProxy:
    def __init__(
        self,
        state: SidecarState,
        *,
        workload: str = "",
        namespace: str = "",
        outbound_policy: OutboundPolicy = "ALLOW_ANY",
        observer: HopObserver | None = None,
        destination_for: DestinationFor | None = None,
        http_only: bool = False,
    ) -> None:
        self.state = state
        self.pool = ConnectionPool(state)
        self.workload = workload
        self.namespace = namespace
        self.outbound_policy: OutboundPolicy = outbound_policy
        self.observer = observer or NoopObserver()
        self._destination_for = destination_for or self._intercepted_destination
        self._http_only = http_only
        self.refused = 0

    def _intercepted_destination(self, sock: socket.socket) -> Destination | None:
        ip, port = original_dst(sock)
        if port in _OWN_PORTS and sock.getsockname()[1] == port:
            return None  # a direct connection to our own listener: proxying it would loop
        return resolve_destination(self.state.snapshot, ip, port)

    async def handle(self, sock: socket.socket) -> None:
        downstream = "%s:%d" % sock.getpeername()[:2]
        dest = self._destination_for(sock)
        if dest is None:
            return
        if not dest.in_mesh:
            if self.outbound_policy == "REGISTRY_ONLY":
                self._refuse(dest, downstream, "destination is outside the mesh (REGISTRY_ONLY)")
                return
            await self._passthrough(sock, dest, downstream)
            return
        is_http = self._http_only or looks_like_http(await peek(sock, 8, SNIFF_TIMEOUT))
        down = await wrap_accepted(sock, None)
        try:
            if is_http:
                await self._http(down, dest, downstream)
            else:
                await self._tcp(down, dest, downstream)
        finally:
            close(down[1])

    def _refuse(self, dest: Destination, downstream: str, reason: str) -> None:
        self.refused += 1
        log.warning("outbound refused: %s -> %s (%s): %s", downstream, dest.address, dest.service, reason)

    def _hop(self, protocol: str, dest: Destination, downstream: str, mtls: bool) -> Hop:
        return Hop(
            direction="outbound",
            protocol="http" if protocol == "http" else "tcp",
            source_principal=self.state.material.spiffe_id if mtls else "",
            destination_principal=next(iter(sorted(dest.expected_ids)), ""),
            source_workload=self.workload,
            source_namespace=self.namespace,
            destination_workload=dest.workload,
            destination_namespace=dest.namespace,
            destination_service=dest.service,
            upstream_address=dest.address,
            downstream_address=downstream,
            mutual_tls=mtls,
        )

    async def _passthrough(self, sock: socket.socket, dest: Destination, downstream: str) -> None:
        down = await wrap_accepted(sock, None)
        span = self.observer.start(self._hop("tcp", dest, downstream, False), {})
        try:
            up = await connect(dest.ip, dest.port)
        except _UPSTREAM_ERRORS as exc:
            close(down[1])
            span.finish(0, 0, f"connect failed: {exc}")
            return
        _, received = await relay_both(down, up)
        span.finish(0, received)

    async def _tcp(self, down: Streams, dest: Destination, downstream: str) -> None:
        span = self.observer.start(self._hop("tcp", dest, downstream, True), {})
        try:
            up = await self.pool.open(dest, ALPN_TCP)
        except _UPSTREAM_ERRORS as exc:
            self._refuse(dest, downstream, str(exc) or type(exc).__name__)
            span.finish(0, 0, str(exc))
            return
        _, received = await relay_both(down, up.streams)
        span.finish(0, received)

    async def _http(self, down: Streams, dest: Destination, downstream: str) -> None:
        reader, writer = down
        while True:
            try:
                raw = await read_head(reader)
                if raw is None:
                    return
                head = parse_request_head(raw)
            except InvalidRequest as exc:
                log.info("outbound: bad request from %s: %s", downstream, exc)
                writer.write(simple_response(400, "Bad Request", f"{exc}\n", close=True))
                await writer.drain()
                return
            hop = replace(
                self._hop("http", dest, downstream, True),
                method=head.method,
                path=head.target,
                authority=head.host,
            )
            span = self.observer.start(hop, head.lower_map())
            request = serialize_request(head, rewrite_headers(head.headers, set_=span.inject()))
            framing, length = head.framing
            try:
                up, reused = await self.pool.acquire(dest)
            except _UPSTREAM_ERRORS as exc:
                reason = str(exc) or type(exc).__name__
                self._refuse(dest, downstream, reason)
                writer.write(
                    simple_response(
                        503, "Service Unavailable", f"upstream connect error: {reason}\n", close=True
                    )
                )
                await writer.drain()
                span.finish(503, 0, reason)
                return
            try:
                status, n, reusable, must_close = await self._exchange(
                    request, head.method, framing, length, down, up, reused, dest
                )
            except BaseException as exc:
                close(up.writer)
                span.finish(502, 0, str(exc) or type(exc).__name__)
                raise
            span.finish(status, n)
            if status == 101:
                await relay_both(down, up.streams)
                return
            if reusable:
                self.pool.release(dest, up)
            else:
                close(up.writer)
            if must_close or not head.keep_alive:
                return

    async def _exchange(
        self,
        request: bytes,
        method: str,
        framing: Framing,
        length: int,
        down: Streams,
        up: Upstream,
        reused: bool,
        dest: Destination,
    ) -> tuple[int, int, bool, bool]:
        try:
            return await exchange(request, method, framing, length, down, up.streams)
        except (UpstreamClosed, ConnectionResetError, BrokenPipeError):
            # A pooled connection the peer had already closed: retry a bodyless request once
            # on a fresh connection (nothing of it reached the app).
            if not reused or framing is not Framing.NONE:
                raise
        close(up.writer)
        fresh = await self.pool.open(dest, ALPN_HTTP)
        up.reader, up.writer, up.peer, up.generation = (
            fresh.reader,
            fresh.writer,
            fresh.peer,
            fresh.generation,
        )
        return await exchange(request, method, framing, length, down, up.streams)


def fixed_destination(dest_for_request: Callable[[], Destination | None]) -> DestinationFor:
    """For the ingress: every connection goes to the routed destination."""
    return lambda _sock: dest_for_request()
