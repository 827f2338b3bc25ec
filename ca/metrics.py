"""The control plane's Prometheus metrics (definitions only; the CA calls them).

One `CaMetrics` per CA process, in its own registry: certificates issued (by kind of identity),
refused (by reason, one value per error class of `meshward_common.errors`), and CSR latency.
Serve it with `start_metrics_server` (prometheus_client's threaded HTTP server) at /metrics
or /stats/prometheus.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from meshward_common import errors, telemetry
from meshward_common.prometheus import start_metrics_server as serve_registry

IdentityKind = Literal["workload", "node"]

# Seconds; a CSR is signed in about a millisecond, a slow one waits on the registry or a lock.
CSR_LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip

# Refusal reason label per error class, most specific first (SpiffeIdError is an InvalidRequest).
_REASONS: tuple[tuple[type[errors.MeshwardError], str], ...] = (
    (errors.SpiffeIdError, "invalid_spiffe_id"),
    (errors.InvalidRequest, "invalid_request"),
    (errors.Unauthenticated, "unauthenticated"),
    (errors.PermissionDenied, "permission_denied"),
    (errors.RateLimited, "rate_limited"),
    (errors.NotReady, "not_ready"),
    (errors.SvidError, "invalid_certificate"),
    (errors.ConfigError, "config"),
)
REFUSAL_REASONS: tuple[str, ...] = (*(r for _, r in _REASONS), "internal")


def refusal_reason(exc: BaseException) -> str:
    """The `reason` label for a refused CSR: the error class, never the message (unbounded)."""
    for cls, reason in _REASONS:
        if isinstance(exc, cls):
            return reason
    return "internal"


class CaMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.issued = Counter(
            telemetry.CA_CERTS_ISSUED,
            "X.509-SVIDs signed, by identity kind.",
            ("kind",),
            registry=r,
        )
        self.refused = Counter(
            telemetry.CA_CERTS_REFUSED,
            "CreateCertificate calls refused, by reason.",
            ("kind", "reason"),
            registry=r,
        )
        self.csr_latency = Histogram(
            telemetry.CA_CSR_LATENCY,
            "Time from CreateCertificate received to answer, in seconds.",
            ("outcome",),
            buckets=CSR_LATENCY_BUCKETS,
            registry=r,
        )
        # Pre-create the series so a scrape shows zeros before the first CSR (rate() needs them).
        # The children are looked up once: `.labels()` per CSR is a lock and a dict walk.
        self._issued = {kind: self.issued.labels(kind) for kind in ("workload", "node")}
        self._issued_latency = self.csr_latency.labels("issued")

    def record_issued(self, kind: IdentityKind, seconds: float) -> None:
        self._issued[kind].inc()
        self._issued_latency.observe(seconds)

    def record_refused(self, kind: IdentityKind, exc: BaseException, seconds: float) -> None:
        self.refused.labels(kind, refusal_reason(exc)).inc()
        self.csr_latency.labels("refused").observe(seconds)


def start_metrics_server(host: str, port: int, metrics: CaMetrics) -> tuple[str, int]:
    """Serve the registry over HTTP in a daemon thread; returns the bound (host, port)."""
    return serve_registry(host, port, metrics.registry)


def start_multiprocess_metrics_server(
    host: str, port: int, path: Path, registry: CollectorRegistry | None = None
) -> tuple[str, int]:
    """Serve the sum of every worker's metrics (prometheus_client's multiprocess mode: each
    worker, started with PROMETHEUS_MULTIPROC_DIR=path, writes its values to files there), plus
    `registry`'s own collectors (the supervisor's)."""
    from prometheus_client import multiprocess

    served = registry if registry is not None else CollectorRegistry()
    multiprocess.MultiProcessCollector(served, path=str(path))  # type: ignore[no-untyped-call]
    return serve_registry(host, port, served)


ROTATION_PHASES = ("steady", "prepared", "switched")


class AuthorityCollector:
    """The supervisor's view of its roots, read at scrape time: the root rotation's phase (1 for
    the phase in force), how many roots the bundle holds, when each root expires."""

    def __init__(self, state: Callable[[], tuple[str, Sequence[tuple[str, float]]]]) -> None:
        self.state = state  # () -> (phase, [(root sha256, not_after unix seconds)])

    def collect(self) -> Iterator[Metric]:
        phase, roots = self.state()
        phases = GaugeMetricFamily(
            telemetry.CA_ROTATION_PHASE,
            "Root rotation phase in force (1) by phase.",
            labels=["phase"],
        )
        for name in ROTATION_PHASES:
            phases.add_metric([name], 1.0 if name == phase else 0.0)
        yield phases
        yield GaugeMetricFamily(
            telemetry.CA_BUNDLE_ROOTS, "Roots in this trust domain's bundle.", value=len(roots)
        )
        expiry = GaugeMetricFamily(
            telemetry.CA_ROOT_EXPIRY, "Expiry of each root in the bundle.", labels=["sha256"]
        )
        for fingerprint, not_after in roots:
            expiry.add_metric([fingerprint], not_after)
        yield expiry


POLICY_KINDS = ("AuthorizationPolicy", "PeerAuthentication")


class KubernetesCollector:
    """On Kubernetes, the supervisor's watches: how many API objects of each kind the policy
    engine refuses right now (their last good version, if any, stays in force), read at scrape
    time from the sources ("Kind/namespace/name") the mesh source holds refused."""

    def __init__(self, refused: Callable[[], Iterable[str]]) -> None:
        self.refused = refused

    def collect(self) -> Iterator[Metric]:
        counts = dict.fromkeys(POLICY_KINDS, 0)
        for source in self.refused():
            kind = source.partition("/")[0]
            counts[kind] = counts.get(kind, 0) + 1
        gauge = GaugeMetricFamily(
            telemetry.CA_KUBE_REFUSED,
            "Kubernetes objects the policy engine refuses (see the log and `meshward check`).",
            labels=["kind"],
        )
        for kind, count in sorted(counts.items()):
            gauge.add_metric([kind], float(count))
        yield gauge


class FederationCollector:
    """The federation relationships in force, read at scrape time from `Federation.status()`
    (their bundles' roots, whether the last refresh succeeded), and the config file's state (an
    edit refused, keys changed that wait for a restart)."""

    def __init__(
        self,
        federation: Callable[[], Mapping[str, Mapping[str, object]]],
        config: Callable[[], tuple[bool, int]],
    ) -> None:
        self.federation = federation
        self.config = config  # () -> (last edit refused, restart-only keys changed)

    def collect(self) -> Iterator[Metric]:
        roots = GaugeMetricFamily(
            telemetry.CA_FEDERATED_ROOTS,
            "Roots of each federated trust domain's bundle in force (one series per relationship).",
            labels=["trust_domain"],
        )
        ok = GaugeMetricFamily(
            telemetry.CA_FEDERATED_REFRESH_OK,
            "1 if the last fetch from the trust domain's bundle endpoint succeeded or none failed yet.",
            labels=["trust_domain"],
        )
        for td, status in sorted(self.federation().items()):
            count = status.get("roots", 0)
            roots.add_metric([td], float(count if isinstance(count, int) else 0))
            ok.add_metric([td], 0.0 if status.get("error") else 1.0)
        yield roots
        yield ok
        refused, pending = self.config()
        yield GaugeMetricFamily(
            telemetry.CA_CONFIG_REFUSED,
            "1 if the config file's last edit is refused (the last good settings stay).",
            value=1.0 if refused else 0.0,
        )
        yield GaugeMetricFamily(
            telemetry.CA_CONFIG_RESTART_PENDING,
            "Settings changed in the config file that take effect at the next restart.",
            value=float(pending),
        )
