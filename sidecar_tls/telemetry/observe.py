"""The contract between the sidecar's data path and its telemetry (tracing, metrics).

The data path knows nothing of OpenTelemetry or Prometheus. What is constant for a connection (who
calls whom, addresses, mTLS) is a `Hop`, given once to `HopObserver.bind`; per HTTP request the data
path calls `BoundHop.request` with only what varies (method, path, authority, headers), forwards the
headers the returned `HopSpan.inject()` gives, and calls `HopSpan.finish` once. So observers compute
labels and attributes per connection, not per request. `HopObserver.start(hop, headers)` does both
at once (TCP connections, tests). Tracing and metrics implement `HopObserver`; `NoopObserver` serves
when both are off (and in unit tests of the data path).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal, Protocol

from mypy_extensions import mypyc_attr

Direction = Literal["inbound", "outbound"]
# `HopSpan.finish`'s error when the client left before the response was relayed in full (Envoy's
# response flag DC); the status is then the one already sent to it, or 0 if none was.
DOWNSTREAM_CLOSED: Final = "downstream closed"
Protocol_ = Literal["http", "grpc", "tcp"]  # Istio's request_protocol


@dataclass(frozen=True)
class Hop:
    """One request (HTTP) or one connection (TCP) seen by one sidecar."""

    direction: Direction  # inbound = SERVER side (reporter=destination), outbound = CLIENT side
    protocol: Protocol_
    http_version: str = "1.1"  # "2" for HTTP/2 (gRPC is always HTTP/2)
    method: str = ""  # HTTP only
    path: str = ""  # HTTP only, with query
    authority: str = ""  # Host header, HTTP only
    source_principal: str = ""  # SPIFFE ID (spiffe://...), "" when unknown/plaintext
    destination_principal: str = ""
    source_workload: str = ""
    source_namespace: str = ""
    destination_workload: str = ""
    destination_namespace: str = ""
    destination_service: str = ""  # e.g. "reviews.default.svc.cluster.local" or "host:port"
    upstream_address: str = ""  # "ip:port" this sidecar forwards to
    downstream_address: str = ""  # "ip:port" of the peer that connected to this sidecar
    mutual_tls: bool = False  # connection_security_policy: mutual_tls / none


# HopSpan and BoundHop are called on every request: base classes rather than Protocols, so the
# compiled data path calls their implementations directly instead of looking methods up by name.
@mypyc_attr(allow_interpreted_subclasses=True)
class HopSpan:
    def inject(self) -> Sequence[tuple[str, str]]:
        """Headers to set (replacing same-named ones) on the request sent onward:
        traceparent/tracestate, b3 headers, x-request-id when it was missing."""
        raise NotImplementedError

    def finish(
        self, status: int, response_bytes: int, error: str | None = None, grpc_status: int = -1
    ) -> None:
        """Once, when the response has been relayed (status 0 for TCP). `grpc_status`: the
        call's `grpc-status` (-1: not a gRPC call, or it ended without one)."""
        raise NotImplementedError


@mypyc_attr(allow_interpreted_subclasses=True)
class BoundHop:
    def request(
        self, method: str, path: str, authority: str, headers: Mapping[str, str]
    ) -> HopSpan:
        """One HTTP request on the bound connection. `headers`: the incoming request headers by
        lowercase name (first value of each); read lazily, so look up only what is needed."""
        raise NotImplementedError


class HopObserver(Protocol):
    def start(self, hop: Hop, headers: Mapping[str, str]) -> HopSpan:
        """`headers`: the incoming request headers, names lowercased (first value of each)."""
        ...

    def bind(self, base: Hop) -> BoundHop:
        """The per-connection part of hops (method, path, authority of `base` are ignored)."""
        ...


class _NoopSpan(HopSpan):
    def inject(self) -> Sequence[tuple[str, str]]:
        return ()

    def finish(
        self, status: int, response_bytes: int, error: str | None = None, grpc_status: int = -1
    ) -> None:
        return None


NOOP_SPAN: HopSpan = _NoopSpan()  # records nothing, injects nothing


class _NoopBound(BoundHop):
    def request(
        self, method: str, path: str, authority: str, headers: Mapping[str, str]
    ) -> HopSpan:
        return NOOP_SPAN


NOOP_BOUND: BoundHop = _NoopBound()  # for a connection nothing is observed on


class NoopObserver:
    def start(self, hop: Hop, headers: Mapping[str, str]) -> HopSpan:
        return NOOP_SPAN

    def bind(self, base: Hop) -> BoundHop:
        return NOOP_BOUND


class CompositeObserver:
    """Fans one hop out to several observers (tracing and metrics)."""

    def __init__(self, observers: Sequence[HopObserver]) -> None:
        self._observers = tuple(observers)

    def start(self, hop: Hop, headers: Mapping[str, str]) -> HopSpan:
        return _CompositeSpan([o.start(hop, headers) for o in self._observers])

    def bind(self, base: Hop) -> BoundHop:
        bound = [o.bind(base) for o in self._observers]
        if len(bound) == 2:  # tracing + metrics, the sidecar's case: no loops per request
            return _PairBound(bound[0], bound[1])
        return _CompositeBound(bound)


class _PairBound(BoundHop):
    __slots__ = ("_first", "_second")

    def __init__(self, first: BoundHop, second: BoundHop) -> None:
        self._first = first
        self._second = second

    def request(
        self, method: str, path: str, authority: str, headers: Mapping[str, str]
    ) -> HopSpan:
        return _PairSpan(
            self._first.request(method, path, authority, headers),
            self._second.request(method, path, authority, headers),
        )


class _PairSpan(HopSpan):
    __slots__ = ("_first", "_second")

    def __init__(self, first: HopSpan, second: HopSpan) -> None:
        self._first = first
        self._second = second

    def inject(self) -> Sequence[tuple[str, str]]:
        first, second = self._first.inject(), self._second.inject()
        if not second:
            return first
        return [*first, *second] if first else second

    def finish(
        self, status: int, response_bytes: int, error: str | None = None, grpc_status: int = -1
    ) -> None:
        self._first.finish(status, response_bytes, error, grpc_status)
        self._second.finish(status, response_bytes, error, grpc_status)


class _CompositeBound(BoundHop):
    __slots__ = ("_bound",)

    def __init__(self, bound: Sequence[BoundHop]) -> None:
        self._bound = bound

    def request(
        self, method: str, path: str, authority: str, headers: Mapping[str, str]
    ) -> HopSpan:
        return _CompositeSpan([b.request(method, path, authority, headers) for b in self._bound])


class _CompositeSpan(HopSpan):
    __slots__ = ("_spans",)

    def __init__(self, spans: Sequence[HopSpan]) -> None:
        self._spans = spans

    def inject(self) -> Sequence[tuple[str, str]]:
        out: Sequence[tuple[str, str]] = ()
        for span in self._spans:
            injected = span.inject()
            if injected:  # usually only tracing injects: its list is passed on as it is
                out = [*out, *injected] if out else injected
        return out

    def finish(
        self, status: int, response_bytes: int, error: str | None = None, grpc_status: int = -1
    ) -> None:
        for span in self._spans:
            span.finish(status, response_bytes, error, grpc_status)
