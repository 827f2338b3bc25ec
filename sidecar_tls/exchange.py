"""What the sidecar does per request, the same for every codec: policy, identity, trace context and
metrics in, header edits (or its own answer) out.

A codec reads a request head (method, path, authority, headers by lowercase name), hands it to the
connection's exchange, and applies the `Admission` it gets back in its own wire format: remove the
named headers, set the given ones (replacing same-named ones), or answer with the `LocalReply`
instead of forwarding. `InboundExchange` authorizes the caller's request (Istio's attributes, from
the verified peer and the head) and replaces `x-forwarded-client-cert`; `OutboundExchange` starts
the CLIENT side's span. Both take the connection's bound observer, so spans and metrics are
computed per connection, not per request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Final

from policy.request import Request
from sidecar_tls.answers import RBAC_DENIED, LocalReply
from sidecar_tls.authz import InboundAuthorizer
from sidecar_tls.telemetry.observe import BoundHop, HopSpan
from sidecar_tls.xfcc import HEADER as XFCC_HEADER

log = logging.getLogger(__name__)

NOTHING: Final[tuple[str, ...]] = ()
XFCC_ONLY: Final[tuple[str, ...]] = (XFCC_HEADER,)


class Admission:
    """What to do with one request: forward it with these header edits, or answer `reply` (the
    codec then finishes the span with what it sent)."""

    __slots__ = ("remove", "reply", "set_", "span")

    def __init__(
        self,
        span: HopSpan,
        remove: tuple[str, ...] = NOTHING,
        set_: Sequence[tuple[str, str]] = (),
        reply: LocalReply | None = None,
    ) -> None:
        self.span = span
        self.remove = remove  # lowercase header names to drop
        self.set_ = set_  # (lowercase name, value) to set, replacing same-named headers
        self.reply = reply


class OutboundExchange:
    """The CLIENT side of one app connection: a span per request and its context headers."""

    __slots__ = ("observed",)

    def __init__(self, observed: BoundHop) -> None:
        self.observed = observed

    def admit(
        self, method: str, path: str, authority: str, headers: Mapping[str, str]
    ) -> Admission:
        span = self.observed.request(method, path, authority, headers)
        return Admission(span, NOTHING, span.inject())


class InboundExchange:
    """The SERVER side of one caller connection: each request authorized as its own, the caller's
    identity set in `x-forwarded-client-cert` (SANITIZE_SET: whatever the caller sent goes)."""

    __slots__ = (
        "_authorizer",
        "address",
        "observed",
        "pod_ip",
        "port",
        "principal",
        "source_ip",
        "xfcc",
    )

    def __init__(
        self,
        authorizer: Callable[[], InboundAuthorizer],
        observed: BoundHop,
        *,
        principal: str,
        xfcc: str | None,
        source_ip: str,
        address: str,
        pod_ip: str,
        port: int,
    ) -> None:
        self._authorizer = authorizer  # the current one: it is remade when our labels change
        self.observed = observed
        self.principal = principal  # the caller's verified SPIFFE ID, "" for plaintext
        self.xfcc = xfcc  # ours for mTLS callers; None for plaintext ones
        self.source_ip = source_ip
        self.address = address
        self.pod_ip = pod_ip
        self.port = port

    def admit(
        self, method: str, path: str, authority: str, headers: Mapping[str, str]
    ) -> Admission:
        span = self.observed.request(method, path, authority, headers)
        authorizer = self._authorizer()
        # No policy selects the workload (the common case): everything is allowed, so no request
        # to build per request.
        if authorizer.applies():
            decision = authorizer.check(
                Request(
                    self.principal,
                    self.source_ip,
                    self.pod_ip,
                    self.port,
                    is_http=True,
                    method=method,
                    path=path,
                    host=authority,
                    headers=headers,
                )
            )
            if not decision.allowed:
                log.info(
                    "inbound denied: %s %s %s from %s (%s)",
                    self.principal or "plaintext",
                    method,
                    path,
                    self.address,
                    decision.reason,
                )
                return Admission(span, reply=RBAC_DENIED)  # the codec finishes the span
        extra = span.inject()
        if self.xfcc:
            extra = [*extra, (XFCC_HEADER, self.xfcc)]
        return Admission(span, XFCC_ONLY, extra)


Exchange = InboundExchange | OutboundExchange
