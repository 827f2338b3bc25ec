"""The sidecar's Prometheus metrics, in Istio's standard names and labels, served on :15090.

`MetricsObserver` implements `sidecar_tls.telemetry.observe.HopObserver`: every HTTP request counts once in
`istio_requests_total` and `istio_request_duration_milliseconds`, every TCP connection in
`istio_tcp_connections_opened_total`/`closed_total`. Inbound hops report as `reporter="destination"`,
outbound as `reporter="source"`, as Envoy's stats filter does. The SVID's expiry is a gauge the sidecar
sets on every (re)load. Each sidecar has its own `CollectorRegistry`, so several sidecars (or tests)
in one process never share counters. `serve()` exposes it at `/stats/prometheus`.
"""

from __future__ import annotations

import bisect
import functools
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Final, cast

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from meshward_common import telemetry
from meshward_common.errors import ConfigError, SpiffeIdError
from meshward_common.spiffe_id import SpiffeId, parse_workload_id
from sidecar_tls.admin import HttpServer, Reply, Route, serve_app
from sidecar_tls.telemetry.observe import DOWNSTREAM_CLOSED, BoundHop, Hop, HopSpan

# Istio's default buckets for istio_request_duration_milliseconds (stats filter, v1.x).
DURATION_BUCKETS_MS: Final[tuple[float, ...]] = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000,
    1800000, 3600000,
)  # fmt: skip

# Istio's labels that apply to a meshward hop (no app/version/cluster/canonical_revision here).
COMMON_LABELS: Final[tuple[str, ...]] = (
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_canonical_service",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_canonical_service",
    "request_protocol",
    "connection_security_policy",
)
# grpc_response_status: the call's grpc-status for gRPC, "" for other requests (as Istio reports).
REQUEST_LABELS: Final[tuple[str, ...]] = (
    *COMMON_LABELS,
    "response_code",
    "grpc_response_status",
    "response_flags",
)
UNKNOWN: Final = "unknown"  # Istio's value for a label it cannot fill


def hop_labels(hop: Hop) -> tuple[str, ...]:
    """The COMMON_LABELS values of a hop, in order. Istio reports `connection_security_policy` only
    from the destination (the source cannot know the server's policy): `unknown` on outbound."""
    reporter = "destination" if hop.direction == "inbound" else "source"
    if hop.direction == "inbound":
        security = "mutual_tls" if hop.mutual_tls else "none"
    else:
        security = UNKNOWN
    service_name, service_ns = _split_service(hop.destination_service, hop.destination_namespace)
    return (
        reporter,
        hop.source_workload or UNKNOWN,
        hop.source_namespace or _namespace_of(hop.source_principal),
        hop.source_principal or UNKNOWN,
        hop.source_workload or UNKNOWN,
        hop.destination_workload or UNKNOWN,
        hop.destination_namespace or _namespace_of(hop.destination_principal),
        hop.destination_principal or UNKNOWN,
        hop.destination_service or UNKNOWN,
        service_name,
        service_ns,
        hop.destination_workload or UNKNOWN,
        hop.protocol,
        security,
    )


@functools.lru_cache(maxsize=1024)
def _namespace_of(principal: str) -> str:
    """The namespace in a workload SPIFFE ID (`.../ns/<ns>/sa/<sa>`): an inbound sidecar knows its
    caller only by the verified ID, and Istio still fills `source_workload_namespace`."""
    if not principal:
        return UNKNOWN
    try:
        parsed = parse_workload_id(SpiffeId.parse(principal))
    except SpiffeIdError:
        return UNKNOWN
    return parsed[0] if parsed else UNKNOWN


def response_flags(status: int, error: str | None) -> str:
    """Envoy's response flag, the few we can tell: DC (the client left before the response was
    relayed in full), UF (upstream connect failure) when no response."""
    if error == DOWNSTREAM_CLOSED:
        return "DC"
    if status == 0 and error:
        return "UF"
    return "-"


def _split_service(service: str, fallback_ns: str) -> tuple[str, str]:
    """`reviews.default.svc.cluster.local` -> (reviews, default); `host:port` -> (host, ns)."""
    host = service.rsplit(":", 1)[0] if service.count(":") == 1 else service
    if not host:
        return UNKNOWN, fallback_ns or UNKNOWN
    parts = host.split(".")
    if len(parts) >= 2 and (len(parts) == 2 or parts[2] == "svc"):
        return parts[0], parts[1]
    return host, fallback_ns or UNKNOWN


class RequestSeries:
    """One label set's request count and duration histogram, as plain numbers."""

    __slots__ = ("buckets", "count", "sum")

    def __init__(self) -> None:
        self.count = 0
        self.sum = 0.0
        self.buckets = [0] * (len(DURATION_BUCKETS_MS) + 1)  # per bucket; the last is +Inf

    def observe(self, elapsed_ms: float) -> None:
        self.count += 1
        self.sum += elapsed_ms
        # Prometheus buckets are `le`: the first bound >= the value.
        self.buckets[bisect.bisect_left(DURATION_BUCKETS_MS, elapsed_ms)] += 1


# `le` labels as prometheus_client's own Histogram writes them ("1.0", "3.6e+06").
_go_float = cast(Callable[[float], str], floatToGoString)
_LE: Final = [*(_go_float(b) for b in DURATION_BUCKETS_MS), "+Inf"]


class RequestStats:
    """`istio_requests_total` and `istio_request_duration_milliseconds`, counted per request as
    plain integers and turned into metric families only when scraped: prometheus_client's
    `.labels().inc()` / `.observe()` take locks and validate labels on every call, which the
    per-request path cannot afford. Counting and scraping run on the sidecar's event loop (one
    thread), so no lock is needed."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._series: dict[tuple[str, ...], RequestSeries] = {}
        registry.register(self)

    def series(self, labels: tuple[str, ...]) -> RequestSeries:
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = RequestSeries()
        return series

    def describe(self) -> Iterator[Metric]:
        return self._families(())

    def collect(self) -> Iterator[Metric]:
        return self._families(tuple(self._series.items()))

    def _families(
        self, items: tuple[tuple[tuple[str, ...], RequestSeries], ...]
    ) -> Iterator[Metric]:
        total = CounterMetricFamily(
            telemetry.REQUESTS_TOTAL, "Requests seen by this sidecar.", labels=REQUEST_LABELS
        )
        duration = HistogramMetricFamily(
            telemetry.REQUEST_DURATION_MS,
            "Request duration in milliseconds, from request start to response relayed.",
            labels=REQUEST_LABELS,
        )
        for labels, series in items:
            total.add_metric(list(labels), series.count)
            cumulative, running = [], 0
            for le, n in zip(_LE, series.buckets, strict=True):
                running += n
                cumulative.append((le, float(running)))
            duration.add_metric(list(labels), cumulative, series.sum)
        yield total
        yield duration


class SidecarMetrics:
    """The metric families of one sidecar, registered in their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = RequestStats(r)
        self.tcp_opened = Counter(
            telemetry.TCP_OPENED_TOTAL, "TCP connections opened.", COMMON_LABELS, registry=r
        )
        self.tcp_closed = Counter(
            telemetry.TCP_CLOSED_TOTAL, "TCP connections closed.", COMMON_LABELS, registry=r
        )
        self.tcp_sent = Counter(
            "istio_tcp_sent_bytes_total",
            "Bytes sent to the downstream during TCP connections.",
            COMMON_LABELS,
            registry=r,
        )
        self.svid_expiry = Gauge(
            telemetry.SVID_EXPIRY_SECONDS,
            "Unix time at which this sidecar's X.509-SVID expires.",
            ("spiffe_id",),
            registry=r,
        )


class _BoundMetrics(BoundHop):
    """The metrics of one connection's HTTP requests: its labels, fixed once, and its series
    per response code, looked up once each."""

    __slots__ = ("_children", "_labels", "_metrics", "now")

    def __init__(
        self, metrics: SidecarMetrics, labels: tuple[str, ...], now: Callable[[], float]
    ) -> None:
        self._metrics = metrics
        self._labels = labels
        self.now = now
        self._children: dict[tuple[int, int, str], RequestSeries] = {}

    def request(
        self, method: str, path: str, authority: str, headers: Mapping[str, str]
    ) -> HopSpan:
        return _HttpHop(self, self.now())

    def count(self, status: int, grpc_status: int, flags: str, elapsed_ms: float) -> None:
        key = (status, grpc_status, flags)
        series = self._children.get(key)
        if series is None:
            grpc = str(grpc_status) if grpc_status >= 0 else ""
            series = self._metrics.requests.series((*self._labels, str(status), grpc, flags))
            self._children[key] = series
        series.observe(elapsed_ms)


class _HttpHop(HopSpan):
    __slots__ = ("_bound", "_started")

    def __init__(self, bound: _BoundMetrics, started: float) -> None:
        self._bound: _BoundMetrics | None = bound
        self._started = started

    def inject(self) -> Sequence[tuple[str, str]]:
        return ()

    def finish(
        self, status: int, response_bytes: int, error: str | None = None, grpc_status: int = -1
    ) -> None:
        bound = self._bound
        if bound is None:  # counted exactly once, whatever the data path does
            return
        self._bound = None
        elapsed_ms = (bound.now() - self._started) * 1000.0
        bound.count(status, grpc_status, response_flags(status, error), elapsed_ms)


class _TcpHop(HopSpan):
    __slots__ = ("_done", "_labels", "_metrics")

    def __init__(self, metrics: SidecarMetrics, labels: tuple[str, ...]) -> None:
        self._metrics = metrics
        self._labels = labels
        self._done = False
        metrics.tcp_opened.labels(*labels).inc()

    def inject(self) -> Sequence[tuple[str, str]]:
        return ()

    def finish(
        self, status: int, response_bytes: int, error: str | None = None, grpc_status: int = -1
    ) -> None:
        if self._done:
            return
        self._done = True
        self._metrics.tcp_closed.labels(*self._labels).inc()
        if response_bytes > 0:
            self._metrics.tcp_sent.labels(*self._labels).inc(response_bytes)


class MetricsObserver:
    """`HopObserver` counting hops into a sidecar's own registry. `now` is a monotonic clock in
    seconds (injectable for tests)."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.metrics = SidecarMetrics(registry)
        self.registry = self.metrics.registry
        self._now = now

    def start(self, hop: Hop, headers: Mapping[str, str]) -> HopSpan:
        if hop.protocol == "tcp":
            return _TcpHop(self.metrics, hop_labels(hop))
        return self.bind(hop).request(hop.method, hop.path, hop.authority, headers)

    def bind(self, base: Hop) -> _BoundMetrics:
        return _BoundMetrics(self.metrics, hop_labels(base), self._now)

    def set_svid_expiry(self, spiffe_id: str, not_after: datetime) -> None:
        """Called by the sidecar whenever it loads an SVID; replaces the previous one's series."""
        if not_after.tzinfo is None:
            raise ConfigError(
                f"SVID expiry for {spiffe_id} must be timezone-aware, got {not_after}"
            )
        self.metrics.svid_expiry.clear()
        self.metrics.svid_expiry.labels(spiffe_id).set(not_after.timestamp())

    def render(self) -> bytes:
        return generate_latest(self.registry)


METRICS_PATH: Final = "/stats/prometheus"


def metrics_app(registry: CollectorRegistry) -> dict[str, Route]:
    return {METRICS_PATH: lambda: Reply(200, generate_latest(registry), CONTENT_TYPE_LATEST)}


async def serve(host: str, port: int, registry: CollectorRegistry) -> HttpServer:
    """Serve `registry` as Prometheus text on http://host:port/stats/prometheus (Istio's :15090),
    with the sidecar's small admin HTTP server. `await server.cleanup()` stops it; port 0 picks a
    free port (see `bound_port`). ConfigError if the port is taken."""
    return await serve_app(metrics_app(registry), host, port)


def bound_port(server: HttpServer) -> int:
    """The port a `serve()` server actually listens on."""
    return server.port
