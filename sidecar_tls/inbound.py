"""Inbound (15006): terminate the peer's mTLS, identify and authorize the caller, hand the request
to the app at the pod's address and original port.

STRICT requires a client certificate; PERMISSIVE sniffs the first byte (0x16 = a TLS handshake)
and also takes plaintext; DISABLE takes plaintext only. The caller's SPIFFE ID comes from its
verified leaf. Any `x-forwarded-client-cert` the caller sent is replaced by ours. Connections to the
app leave from 127.0.0.6, which the interception rules let through instead of looping them back.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, replace

from meshward_common import ports
from meshward_common.errors import InvalidRequest, MeshwardError, Unauthenticated
from sidecar_tls.authz import AuthzRequest, InboundAuthorizer
from sidecar_tls.http1 import (
    looks_like_http,
    parse_request_head,
    rewrite_headers,
    serialize_request,
    simple_response,
)
from sidecar_tls.http_stream import exchange, read_head, relay_body
from sidecar_tls.net import (
    Streams,
    close,
    connect,
    original_dst,
    peek,
    peer_leaf_der,
    relay_both,
    selected_alpn,
    wrap_accepted,
)
from sidecar_tls.observe import Hop, HopObserver, NoopObserver
from sidecar_tls.state import SidecarState
from sidecar_tls.tls import ALPN_HTTP, PeerIdentity, verify_peer_leaf
from sidecar_tls.xfcc import format_xfcc, sanitize_set

log = logging.getLogger(__name__)

TLS_HANDSHAKE_RECORD = 0x16
FIRST_BYTES_TIMEOUT = 10.0
_NEVER_FORWARD = frozenset(
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
        self._source = passthrough_source
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
        if use_tls:
            material = self.state.material
            try:
                down = await wrap_accepted(sock, material.server)
            except (ssl.SSLError, ConnectionError, TimeoutError, OSError) as exc:
                self._refuse(downstream, port, f"TLS handshake failed ({mode}): {_reason(exc)}")
                return
            try:
                peer = verify_peer_leaf(
                    peer_leaf_der(down[1]), material.trust_domains, self.state.now()
                )
            except Unauthenticated as exc:
                close(down[1])
                self._refuse(downstream, port, str(exc))
                return
            is_http = selected_alpn(down[1]) == ALPN_HTTP
        else:
            down = await wrap_accepted(sock, None)
            is_http = looks_like_http(first)
        caller = Caller(peer, downstream, str(peer_ip))
        try:
            if is_http:
                await self._http(down, caller, port)
            else:
                await self._tcp(down, caller, port)
        finally:
            close(down[1])

    def _refuse(self, downstream: str, port: int, reason: str) -> None:
        self.refused += 1
        log.warning("inbound refused: %s -> port %d: %s", downstream, port, reason)

    def _hop(self, protocol: str, caller: Caller, port: int) -> Hop:
        return Hop(
            direction="inbound",
            protocol="http" if protocol == "http" else "tcp",
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
        return await connect(self.app_host, port, local_addr=(self._source, 0))

    async def _tcp(self, down: Streams, caller: Caller, port: int) -> None:
        decision = self.authorizer.check(
            AuthzRequest(
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

    async def _http(self, down: Streams, caller: Caller, port: int) -> None:
        reader, writer = down
        xfcc = (
            format_xfcc(
                self.state.material.spiffe_id, caller.peer.cert_sha256, str(caller.peer.spiffe_id)
            )
            if caller.peer
            else None
        )
        app: Streams | None = None
        try:
            while True:
                try:
                    raw = await read_head(reader)
                    if raw is None:
                        return
                    head = parse_request_head(raw)
                except InvalidRequest as exc:
                    log.info("inbound: bad request from %s: %s", caller.address, exc)
                    writer.write(simple_response(400, "Bad Request", f"{exc}\n", close=True))
                    await writer.drain()
                    return
                lower = head.lower_map()
                hop = replace(
                    self._hop("http", caller, port),
                    method=head.method,
                    path=head.target,
                    authority=head.host,
                )
                span = self.observer.start(hop, lower)
                decision = self.authorizer.check(
                    AuthzRequest(
                        _principal(caller),
                        caller.ip,
                        self.pod_ip,
                        port,
                        is_http=True,
                        method=head.method,
                        path=head.target,
                        host=head.host,
                        headers=lower,
                    )
                )
                framing, length = head.framing
                if not decision.allowed:
                    log.info(
                        "inbound denied: %s %s %s from %s (%s)",
                        _principal(caller) or "plaintext",
                        head.method,
                        head.target,
                        caller.address,
                        decision.reason,
                    )
                    has_body = length > 0 or framing.value == "chunked"
                    writer.write(
                        simple_response(403, "Forbidden", "RBAC: access denied", close=has_body)
                    )
                    await writer.drain()
                    span.finish(403, 19, "RBAC: access denied")
                    if has_body or not head.keep_alive:
                        return
                    continue
                headers = rewrite_headers(sanitize_set(head.headers, xfcc), set_=span.inject())
                request = serialize_request(head, headers)
                if app is None or app[0].at_eof():
                    if app is not None:
                        close(app[1])
                    try:
                        app = await self._connect_app(port)
                    except (OSError, TimeoutError) as exc:
                        await relay_body(reader, _Discard(), framing, length)  # type: ignore[arg-type]
                        writer.write(
                            simple_response(
                                503, "Service Unavailable", f"app not reachable: {exc}\n", close=True
                            )
                        )
                        await writer.drain()
                        span.finish(503, 0, str(exc))
                        return
                try:
                    status, n, reusable, must_close = await exchange(
                        request, head.method, framing, length, down, app
                    )
                except (MeshwardError, ConnectionError, OSError) as exc:
                    span.finish(502, 0, str(exc) or type(exc).__name__)
                    return
                span.finish(status, n)
                if status == 101:
                    await relay_both(down, app)
                    return
                if not reusable:
                    close(app[1])
                    app = None
                if must_close or not head.keep_alive:
                    return
        finally:
            if app is not None:
                close(app[1])


class _Discard:
    """A writer that drops what it is given (a refused request's body)."""

    def write(self, data: bytes) -> None:
        return None

    async def drain(self) -> None:
        return None


def _principal(caller: Caller) -> str:
    return str(caller.peer.spiffe_id) if caller.peer else ""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    return str(exc) or type(exc).__name__
