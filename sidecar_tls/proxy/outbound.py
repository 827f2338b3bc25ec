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
from typing import Final

from meshward_common import ports
from meshward_common.errors import MeshwardError
from sidecar_tls.answers import REQUEST_TIMEOUT_S, LocalReply, upstream_unavailable
from sidecar_tls.destinations import Destination, OutboundPolicy, resolve_destination
from sidecar_tls.draining import DRAIN_S, hold
from sidecar_tls.exchange import Admission, Exchange, OutboundExchange
from sidecar_tls.http1.head import HOP_BY_HOP, RequestHead, looks_like_http
from sidecar_tls.http1.relay import HttpRelay
from sidecar_tls.http1.upstream import RelayHooks, UpstreamLink
from sidecar_tls.http2.connection import H2Side
from sidecar_tls.http2.headers import looks_like_h2c
from sidecar_tls.http2.streams import Forwarder, Route
from sidecar_tls.proxy.net import (
    FIRST_BYTES_TIMEOUT,
    Streams,
    close,
    connect,
    original_dst,
    peek,
    relay_both,
    wrap_accepted,
    wrap_accepted_protocol,
)
from sidecar_tls.proxy.pool import ConnectionPool
from sidecar_tls.state import SidecarState
from sidecar_tls.telemetry.observe import Hop, HopObserver, NoopObserver, Protocol_
from sidecar_tls.tls import ALPN_TCP

log = logging.getLogger(__name__)

_UPSTREAM_ERRORS: Final = (MeshwardError, OSError, ssl.SSLError, TimeoutError)
_OWN_PORTS: Final = frozenset({ports.OUTBOUND, ports.INBOUND, ports.ADMIN, ports.HEALTH})

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
        request_timeout: float = REQUEST_TIMEOUT_S,
        drain_s: float = DRAIN_S,
    ) -> None:
        self.state = state
        self.pool = ConnectionPool(state)
        self.workload = workload
        self.namespace = namespace
        self.outbound_policy: OutboundPolicy = outbound_policy
        self.observer = observer or NoopObserver()
        self._destination_for = destination_for or self._intercepted_destination
        self._http_only = http_only  # HTTP/1.1 or h2c, never relayed as TCP (the ingress)
        self.request_timeout = request_timeout  # answers.REQUEST_TIMEOUT_S; 0: none
        self.drain_s = drain_s  # stopping: how long open exchanges and streams may finish; 0: none
        self.refused = 0

    def _intercepted_destination(self, sock: socket.socket) -> Destination | None:
        ip, port = original_dst(sock)
        if port in _OWN_PORTS and sock.getsockname()[1] == port:
            return None  # a direct connection to our own listener: proxying it would loop
        return resolve_destination(self.state.snapshot, ip, port)

    async def handle(self, sock: socket.socket) -> None:
        peer_ip, peer_port = sock.getpeername()[:2]
        downstream = f"{peer_ip}:{peer_port}"
        dest = self._destination_for(sock)
        if dest is None:
            return
        if not dest.in_mesh:
            if self.outbound_policy == "REGISTRY_ONLY":
                self._refuse(dest, downstream, "destination is outside the mesh (REGISTRY_ONLY)")
                return
            await self._passthrough(sock, dest, downstream)
            return
        first = await peek(sock, 8, FIRST_BYTES_TIMEOUT)
        if looks_like_h2c(first):  # before HTTP/1: the preface's PRI looks like a method
            side = H2Side(
                client_side=False,
                acceptor=Forwarder(_OutboundH2Route(self, dest, downstream), self.request_timeout),
            )
            await wrap_accepted_protocol(sock, None, side)
            await hold(side, self.drain_s)
            return
        if self._http_only or looks_like_http(first):
            hooks = _OutboundHooks(self, dest, downstream)
            relay = HttpRelay(hooks, self.request_timeout)
            try:
                await wrap_accepted_protocol(sock, None, relay)
                relay.start()
                await hold(relay, self.drain_s)
            finally:
                hooks.close()
            return
        down = await wrap_accepted(sock, None)
        try:
            await self._tcp(down, dest, downstream)
        finally:
            close(down[1])

    def _refuse(self, dest: Destination, downstream: str, reason: str) -> None:
        self.refused += 1
        log.warning(
            "outbound refused: %s -> %s (%s): %s", downstream, dest.address, dest.service, reason
        )

    def exchange(
        self, dest: Destination, downstream: str, protocol: Protocol_, http_version: str = "1.1"
    ) -> OutboundExchange:
        """The per-request part of one app connection, for every codec. Who calls whom is fixed
        for the connection: the observers take it once."""
        return OutboundExchange(
            self.observer.bind(self._hop(protocol, dest, downstream, True, http_version))
        )

    def _hop(
        self,
        protocol: Protocol_,
        dest: Destination,
        downstream: str,
        mtls: bool,
        http_version: str = "1.1",
    ) -> Hop:
        return Hop(
            direction="outbound",
            protocol=protocol,
            http_version=http_version,
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


def fixed_destination(dest_for_request: Callable[[], Destination | None]) -> DestinationFor:
    """For the ingress: every connection goes to the routed destination."""
    return lambda _sock: dest_for_request()


class _OutboundHooks(RelayHooks):
    """Per app connection: how the relay rewrites requests and finds pooled peer connections."""

    def __init__(self, proxy: OutboundProxy, dest: Destination, downstream: str) -> None:
        self.proxy = proxy
        self.dest = dest
        self.downstream = downstream
        self.link: UpstreamLink | None = None  # idle between this connection's requests
        self.exchange = proxy.exchange(dest, downstream, "http")

    def prepare(self, head: RequestHead) -> Admission:
        admission = self.exchange.admit(head.method, head.target, head.host, head.lower_map())
        # Connection semantics are per hop: the app's `connection: close` must not close the
        # pooled sidecar-to-sidecar connection (an upgrade keeps its headers).
        if not head.found.get("upgrade"):
            admission.remove = HOP_BY_HOP
        return admission

    def take_upstream(self) -> UpstreamLink | None:
        # The link of this connection's previous request first: no pool round trip per request.
        link, self.link = self.link, None
        if link is not None:
            if self.proxy.pool.fits(self.dest, link):
                return link
            link.close()
        return self.proxy.pool.take_link(self.dest)

    async def open_upstream(self) -> UpstreamLink:
        return await self.proxy.pool.open_link(self.dest)

    def release_upstream(self, link: UpstreamLink, reusable: bool) -> None:
        if not reusable:
            link.close()
        elif self.link is None:
            self.link = link  # kept for this connection's next request
        else:
            self.proxy.pool.release_link(self.dest, link)

    def close(self) -> None:
        """The app's connection is gone: its idle link goes back to the pool for others."""
        link, self.link = self.link, None
        if link is not None:
            self.proxy.pool.release_link(self.dest, link)

    def upstream_failed(self, exc: BaseException) -> LocalReply:
        reason = str(exc) or type(exc).__name__
        self.proxy._refuse(self.dest, self.downstream, reason)
        return upstream_unavailable(reason)


class _OutboundH2Route(Route):
    """Per HTTP/2 app connection: each stream to a pooled HTTP/2 mTLS connection to the peer
    sidecar (ALPN h2), with its own span and context headers."""

    def __init__(self, proxy: OutboundProxy, dest: Destination, downstream: str) -> None:
        super().__init__()
        self.proxy = proxy
        self.dest = dest
        self.downstream = downstream
        self.upstreams = proxy.pool.h2_upstreams(dest)

    def exchange(self, protocol: Protocol_) -> Exchange:
        return self.proxy.exchange(self.dest, self.downstream, protocol, "2")

    def fits(self, side: H2Side) -> bool:
        return self.proxy.pool.h2_fits(self.dest, side)

    def take_upstream(self) -> H2Side | None:
        return self.upstreams.take(self.fits)

    async def open_upstream(self) -> H2Side:
        return await self.upstreams.get(self.fits)

    def upstream_failed(self, exc: BaseException) -> LocalReply:
        reason = str(exc) or type(exc).__name__
        self.proxy._refuse(self.dest, self.downstream, reason)
        return upstream_unavailable(reason)
