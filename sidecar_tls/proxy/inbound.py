"""Inbound (15006): terminate the peer's mTLS, identify and authorize the caller, hand the request
to the app at the pod's address and original port.

STRICT requires a client certificate; PERMISSIVE sniffs the first byte (0x16 = a TLS handshake)
and also takes plaintext; DISABLE takes plaintext only. The caller's SPIFFE ID comes from its
verified leaf. Any `x-forwarded-client-cert` the caller sent is replaced by ours. Connections to the
app leave from 127.0.0.6, which the interception rules let through instead of looping them back.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, cast

from meshward_common import ports
from meshward_common.errors import Unauthenticated
from policy.request import Request
from sidecar_tls.answers import REQUEST_TIMEOUT_S, LocalReply, app_unreachable
from sidecar_tls.authz import InboundAuthorizer
from sidecar_tls.draining import DRAIN_S, hold
from sidecar_tls.exchange import Admission, Exchange, InboundExchange
from sidecar_tls.http1.head import RequestHead, looks_like_http
from sidecar_tls.http1.relay import HttpRelay, TlsHttpRelay
from sidecar_tls.http1.upstream import RelayHooks, UpstreamLink
from sidecar_tls.http2.connection import H2Side, TlsH2Side
from sidecar_tls.http2.headers import looks_like_h2c
from sidecar_tls.http2.streams import Forwarder, Route
from sidecar_tls.http2.upstreams import H2Upstreams
from sidecar_tls.proxy.net import (
    FIRST_BYTES_TIMEOUT,
    Streams,
    close,
    connect,
    open_protocol,
    original_dst,
    peek,
    peer_certs,
    relay_both,
    selected_alpn,
    streams_over,
    wrap_accepted_protocol,
)
from sidecar_tls.state import SidecarState
from sidecar_tls.telemetry.observe import Hop, HopObserver, NoopObserver, Protocol_
from sidecar_tls.tls import ALPN_H2, ALPN_HTTP, PeerIdentity, verify_peer_leaf
from sidecar_tls.xfcc import format_xfcc

log = logging.getLogger(__name__)

TLS_HANDSHAKE_RECORD: Final = 0x16
APP_CONNECT_SECONDS: Final = 10.0
_NEVER_FORWARD: Final = frozenset(
    {ports.OUTBOUND, ports.INBOUND, ports.ADMIN, ports.HEALTH, ports.PROMETHEUS}
)

OriginalDst = Callable[[socket.socket], tuple[str, int]]


@dataclass(frozen=True)
class Caller:
    peer: PeerIdentity | None  # None: plaintext
    address: str  # ip:port
    ip: str


class InboundProxy:
    def __init__(
        self,
        state: SidecarState,
        authorizer: InboundAuthorizer,
        *,
        pod_ip: str,
        workload: str = "",
        namespace: str = "",
        service: str = "",
        observer: HopObserver | None = None,
        app_host: str | None = None,
        original_dst: OriginalDst = original_dst,
        passthrough_source: str = ports.INBOUND_PASSTHROUGH_SOURCE,
        request_timeout: float = REQUEST_TIMEOUT_S,
        drain_s: float = DRAIN_S,
    ) -> None:
        self.state = state
        self.authorizer = authorizer
        self.pod_ip = pod_ip
        self.app_host = app_host or pod_ip
        self.workload = workload
        self.namespace = namespace
        self.service = service
        self.observer = observer or NoopObserver()
        self._original_dst = original_dst
        self.passthrough_source = passthrough_source
        self.request_timeout = request_timeout  # answers.REQUEST_TIMEOUT_S; 0: none
        self.drain_s = drain_s  # stopping: how long open exchanges and streams may finish; 0: none
        self.refused = 0

    async def handle(self, sock: socket.socket) -> None:
        peer_ip, peer_port = sock.getpeername()[:2]
        downstream = f"{peer_ip}:{peer_port}"
        _, port = self._original_dst(sock)
        if port in _NEVER_FORWARD:
            self._refuse(downstream, port, "connection to a sidecar port, not an app port")
            return
        mode = self.authorizer.mtls_mode(port)
        first = b""
        if mode != "STRICT":
            first = await peek(sock, 8, FIRST_BYTES_TIMEOUT)
        use_tls = mode == "STRICT" or (
            mode == "PERMISSIVE" and first[:1] == bytes([TLS_HANDSHAKE_RECORD])
        )
        peer: PeerIdentity | None = None
        # until the caller is known: buffers, reads paused
        relay = (TlsHttpRelay if use_tls else HttpRelay)(_NoHooks(), self.request_timeout)
        if use_tls:
            material = self.state.material
            try:
                transport = await wrap_accepted_protocol(sock, material.server, relay)
            except (ssl.SSLError, ConnectionError, TimeoutError, OSError) as exc:
                self._refuse(downstream, port, f"TLS handshake failed ({mode}): {_reason(exc)}")
                return
            try:
                peer = verify_peer_leaf(
                    peer_certs(transport), material.bundle_roots, self.state.now()
                )
            except Unauthenticated as exc:
                transport.close()
                self._refuse(downstream, port, str(exc))
                return
            alpn = selected_alpn(transport)
            is_h2 = alpn == ALPN_H2
            is_http = alpn == ALPN_HTTP
        else:
            transport = await wrap_accepted_protocol(sock, None, relay)
            is_h2 = looks_like_h2c(first)
            is_http = not is_h2 and looks_like_http(first)
        caller = Caller(peer, downstream, str(peer_ip))
        if relay.state == "closed":
            return
        if is_h2:
            route = _InboundH2Route(self, caller, port)
            side = (TlsH2Side if use_tls else H2Side)(
                client_side=False, acceptor=Forwarder(route, self.request_timeout)
            )
            # The relay held the transport (paused) while the caller was checked: hand it over,
            # with what the relay had already received.
            transport.set_protocol(cast(asyncio.BaseProtocol, side))
            side.connection_made(transport)
            if relay.buf:
                side.data_received(bytes(relay.buf))
            transport.resume_reading()
            try:
                await hold(side, self.drain_s)
            finally:
                route.closed()
            return
        if is_http:
            hooks = _InboundHooks(self, self.exchange(caller, port, "http"), port)
            relay.hooks = hooks
            relay.start()
            try:
                await hold(relay, self.drain_s)
            finally:
                hooks.close()
            return
        down = streams_over(transport, bytes(relay.buf))
        try:
            await self._tcp(down, caller, port)
        finally:
            close(down[1])

    def _refuse(self, downstream: str, port: int, reason: str) -> None:
        self.refused += 1
        log.warning("inbound refused: %s -> port %d: %s", downstream, port, reason)

    def exchange(
        self, caller: Caller, port: int, protocol: Protocol_, http_version: str = "1.1"
    ) -> InboundExchange:
        """The per-request part of one caller connection, for every codec. Who calls whom is
        fixed for the connection: the observers take it once."""
        peer = caller.peer
        xfcc = (
            format_xfcc(self.state.material.spiffe_id, peer.cert_sha256, str(peer.spiffe_id))
            if peer
            else None
        )
        return InboundExchange(
            self.current_authorizer,
            self.observer.bind(self._hop(protocol, caller, port, http_version)),
            principal=_principal(caller),
            xfcc=xfcc,
            source_ip=caller.ip,
            address=caller.address,
            pod_ip=self.pod_ip,
            port=port,
        )

    def current_authorizer(self) -> InboundAuthorizer:
        return self.authorizer

    def _hop(
        self, protocol: Protocol_, caller: Caller, port: int, http_version: str = "1.1"
    ) -> Hop:
        return Hop(
            direction="inbound",
            protocol=protocol,
            http_version=http_version,
            source_principal=str(caller.peer.spiffe_id) if caller.peer else "",
            destination_principal=self.state.material.spiffe_id,
            destination_workload=self.workload,
            destination_namespace=self.namespace,
            destination_service=self.service or f"{self.pod_ip}:{port}",
            upstream_address=f"{self.app_host}:{port}",
            downstream_address=caller.address,
            mutual_tls=caller.peer is not None,
        )

    async def _connect_app(self, port: int) -> Streams:
        return await connect(self.app_host, port, local_addr=(self.passthrough_source, 0))

    async def _tcp(self, down: Streams, caller: Caller, port: int) -> None:
        decision = self.authorizer.check(
            Request(
                _principal(caller),
                caller.ip,
                self.pod_ip,
                port,
                is_http=False,
            )
        )
        span = self.observer.start(self._hop("tcp", caller, port), {})
        if not decision.allowed:
            self._refuse(caller.address, port, f"RBAC: access denied ({decision.reason})")
            span.finish(0, 0, "RBAC: access denied")
            return
        try:
            app = await self._connect_app(port)
        except (OSError, TimeoutError) as exc:
            span.finish(0, 0, f"app connect failed: {exc}")
            return
        _, received = await relay_both(down, app)
        span.finish(0, received)


class _NoHooks(RelayHooks):
    """Hooks of a relay whose caller is not verified yet: it is never started with these."""

    def prepare(self, head: RequestHead) -> Admission:
        raise AssertionError("relay started before the caller was verified")

    def take_upstream(self) -> UpstreamLink | None:
        return None

    async def open_upstream(self) -> UpstreamLink:
        raise AssertionError("relay started before the caller was verified")

    def release_upstream(self, link: UpstreamLink, reusable: bool) -> None:
        link.close()

    def upstream_failed(self, exc: BaseException) -> LocalReply:
        raise AssertionError("relay started before the caller was verified")


class _InboundHooks(RelayHooks):
    """Per HTTP/1.1 caller connection: its exchange, and one keep-alive connection to the app."""

    def __init__(self, proxy: InboundProxy, exchange: InboundExchange, port: int) -> None:
        self.proxy = proxy
        self.exchange = exchange
        self.port = port
        self.app: UpstreamLink | None = None

    def prepare(self, head: RequestHead) -> Admission:
        return self.exchange.admit(head.method, head.target, head.host, head.lower_map())

    def take_upstream(self) -> UpstreamLink | None:
        app, self.app = self.app, None
        if app is not None and app.usable():
            return app
        return None

    async def open_upstream(self) -> UpstreamLink:
        _, link = await open_protocol(
            UpstreamLink,
            self.proxy.app_host,
            self.port,
            APP_CONNECT_SECONDS,
            local_addr=(self.proxy.passthrough_source, 0),
        )
        return link

    def release_upstream(self, link: UpstreamLink, reusable: bool) -> None:
        if reusable:
            self.app = link
        else:
            link.close()

    def upstream_failed(self, exc: BaseException) -> LocalReply:
        return app_unreachable(str(exc))

    def close(self) -> None:
        if self.app is not None:
            self.app.close()
            self.app = None


def _principal(caller: Caller) -> str:
    return str(caller.peer.spiffe_id) if caller.peer else ""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    return str(exc) or type(exc).__name__


class _InboundH2Route(Route):
    """Per HTTP/2 caller connection: each stream authorized as its own request, then carried to
    the app over h2c (as many connections as the app's stream limit needs, closed with this one)."""

    def __init__(self, proxy: InboundProxy, caller: Caller, port: int) -> None:
        super().__init__()
        self.proxy = proxy
        self.caller = caller
        self.port = port
        self.upstreams = H2Upstreams(self._connect_app)

    def exchange(self, protocol: Protocol_) -> Exchange:
        return self.proxy.exchange(self.caller, self.port, protocol, "2")

    async def _connect_app(self) -> H2Side:
        _, side = await open_protocol(
            lambda: H2Side(client_side=True),
            self.proxy.app_host,
            self.port,
            APP_CONNECT_SECONDS,
            local_addr=(self.proxy.passthrough_source, 0),
        )
        return side

    def take_upstream(self) -> H2Side | None:
        return self.upstreams.take()

    async def open_upstream(self) -> H2Side:
        return await self.upstreams.get()

    def upstream_failed(self, exc: BaseException) -> LocalReply:
        return app_unreachable(str(exc) or type(exc).__name__)

    def closed(self) -> None:
        self.upstreams.close_all()
