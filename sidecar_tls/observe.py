"""The contract between the sidecar's data path and its telemetry (tracing, metrics).

The data path knows nothing of OpenTelemetry or Prometheus: for every HTTP request (and every TCP
connection) it builds a `Hop`, calls `HopObserver.start`, forwards the headers the returned
`HopSpan.inject()` gives, and calls `HopSpan.finish` once. Tracing and metrics implement
`HopObserver`; `NoopObserver` serves when both are off (and in unit tests of the data path).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

Direction = Literal["inbound", "outbound"]
Protocol_ = Literal["http", "tcp"]


@dataclass(frozen=True)
class Hop:
    """One request (HTTP) or one connection (TCP) seen by one sidecar."""

    direction: Direction  # inbound = SERVER side (reporter=destination), outbound = CLIENT side
    protocol: Protocol_
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


class HopSpan(Protocol):
    def inject(self) -> Sequence[tuple[str, str]]:
        """Headers to set (replacing same-named ones) on the request sent onward:
        traceparent/tracestate, b3 headers, x-request-id when it was missing."""
        ...

    def finish(self, status: int, response_bytes: int, error: str | None = None) -> None:
        """Once, when the response has been relayed (status 0 for TCP)."""
        ...


class HopObserver(Protocol):
    def start(self, hop: Hop, headers: Mapping[str, str]) -> HopSpan:
        """`headers`: the incoming request headers, names lowercased (first value of each)."""
        ...


class _NoopSpan:
    def inject(self) -> Sequence[tuple[str, str]]:
        return ()

    def finish(self, status: int, response_bytes: int, error: str | None = None) -> None:
        return None


class NoopObserver:
    _span = _NoopSpan()

    def start(self, hop: Hop, headers: Mapping[str, str]) -> HopSpan:
        return self._span


class CompositeObserver:
    """Fans one hop out to several observers (tracing and metrics)."""

    def __init__(self, observers: Sequence[HopObserver]) -> None:
        self._observers = tuple(observers)

    def start(self, hop: Hop, headers: Mapping[str, str]) -> HopSpan:
        return _CompositeSpan([o.start(hop, headers) for o in self._observers])


class _CompositeSpan:
    def __init__(self, spans: Sequence[HopSpan]) -> None:
        self._spans = spans

    def inject(self) -> Sequence[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for span in self._spans:
            out.extend(span.inject())
        return out

    def finish(self, status: int, response_bytes: int, error: str | None = None) -> None:
        for span in self._spans:
            span.finish(status, response_bytes, error)
