"""The sidecar's Prometheus metrics, in Istio's standard names and labels, served on :15090.

`MetricsObserver` implements `sidecar_tls.observe.HopObserver`: every HTTP request counts once in
`istio_requests_total` and `istio_request_duration_milliseconds`, every TCP connection in
`istio_tcp_connections_opened_total`/`closed_total`. Inbound hops report as `reporter="destination"`,
outbound as `reporter="source"`, as Envoy's stats filter does. The SVID's expiry is a gauge the sidecar
sets on every (re)load. Each sidecar has its own `CollectorRegistry`, so several sidecars (or tests)
in one process never share counters. `serve()` exposes it at `/stats/prometheus`.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from meshward_common import telemetry
from meshward_common.errors import ConfigError, SpiffeIdError
from meshward_common.spiffe_id import SpiffeId, parse_workload_id
from sidecar_tls.observe import Hop, HopSpan

# Istio's default buckets for istio_request_duration_milliseconds (stats filter, v1.x).
DURATION_BUCKETS_MS: tuple[float, ...] = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000,
    1800000, 3600000,
)  # fmt: skip

# Istio's labels that apply to a meshward hop (no app/version/cluster/canonical_revision here).
COMMON_LABELS: tuple[str, ...] = (
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
REQUEST_LABELS: tuple[str, ...] = (*COMMON_LABELS, "response_code", "response_flags")
UNKNOWN = "unknown"  # Istio's value for a label it cannot fill


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
    """Envoy's response flag, the few we can tell: UF (upstream connect failure) when no response."""
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


class SidecarMetrics:
    """The metric families of one sidecar, registered in their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            telemetry.REQUESTS_TOTAL, "Requests seen by this sidecar.", REQUEST_LABELS, registry=r
        )
        self.duration = Histogram(
            telemetry.REQUEST_DURATION_MS,
            "Request duration in milliseconds, from request start to response relayed.",
            REQUEST_LABELS,
            buckets=DURATION_BUCKETS_MS,
            registry=r,
        )
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


class _HttpHop:
    __slots__ = ("_done", "_labels", "_metrics", "_now", "_started")

    def __init__(
        self, metrics: SidecarMetrics, labels: tuple[str, ...], now: Callable[[], float]
    ) -> None:
        self._metrics = metrics
        self._labels = labels
        self._now = now
        self._started = now()
        self._done = False

    def inject(self) -> Sequence[tuple[str, str]]:
        return ()

    def finish(self, status: int, response_bytes: int, error: str | None = None) -> None:
        if self._done:  # counted exactly once, whatever the data path does
            return
        self._done = True
        labels = (*self._labels, str(status), response_flags(status, error))
        elapsed_ms = (self._now() - self._started) * 1000.0
        self._metrics.requests.labels(*labels).inc()
        self._metrics.duration.labels(*labels).observe(elapsed_ms)


class _TcpHop:
    __slots__ = ("_done", "_labels", "_metrics")

    def __init__(self, metrics: SidecarMetrics, labels: tuple[str, ...]) -> None:
        self._metrics = metrics
        self._labels = labels
        self._done = False
        metrics.tcp_opened.labels(*labels).inc()

    def inject(self) -> Sequence[tuple[str, str]]:
        return ()

    def finish(self, status: int, response_bytes: int, error: str | None = None) -> None:
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
        labels = hop_labels(hop)
        if hop.protocol == "tcp":
            return _TcpHop(self.metrics, labels)
        return _HttpHop(self.metrics, labels, self._now)

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


METRICS_PATH = "/stats/prometheus"


def metrics_app(registry: CollectorRegistry) -> web.Application:
    async def stats(_request: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get(METRICS_PATH, stats)
    return app


async def serve(host: str, port: int, registry: CollectorRegistry) -> web.AppRunner:
    """Serve `registry` as Prometheus text on http://host:port/stats/prometheus (Istio's :15090).
    Returns the runner: `await runner.cleanup()` stops it. Port 0 picks a free port
    (see `bound_port`)."""
    runner = web.AppRunner(metrics_app(registry), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc.strerror}") from exc
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The port a `serve()` runner actually listens on."""
    for address in runner.addresses:
        if isinstance(address, tuple):
            return int(address[1])
    raise ConfigError("metrics server is not listening on a TCP port")
