"""The node agent's Prometheus metrics (definitions only; the agent calls them).

One `AgentMetrics` per agent, in its own registry: SVID rotations (by kind and result), Workload API
streams open (by stream), and the expiry of every SVID it holds. Serve it with
`start_metrics_server` (prometheus_client's threaded HTTP server).
"""

from __future__ import annotations

import contextlib
import datetime as dt
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge

from meshward_common import telemetry
from meshward_common.errors import ConfigError
from meshward_common.prometheus import start_metrics_server as serve_registry

SvidKind = Literal["workload", "node"]
RotationResult = Literal["ok", "error"]
Stream = Literal["x509_svid", "x509_bundles", "mesh_state"]


class AgentMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.rotations = Counter(
            telemetry.AGENT_ROTATIONS,
            "SVID renewals attempted, by identity kind and result.",
            ("kind", "result"),
            registry=r,
        )
        self.streams = Gauge(
            telemetry.AGENT_STREAMS_OPEN,
            "Workload API streams currently open, by stream.",
            ("stream",),
            registry=r,
        )
        self.svid_expiry = Gauge(
            telemetry.SVID_EXPIRY_SECONDS,
            "Unix time at which each SVID this agent holds expires.",
            ("spiffe_id",),
            registry=r,
        )
        for stream in ("x509_svid", "x509_bundles", "mesh_state"):
            self.streams.labels(stream).set(0)

    def record_rotation(self, kind: SvidKind, result: RotationResult) -> None:
        self.rotations.labels(kind, result).inc()

    def stream_opened(self, stream: Stream) -> None:
        self.streams.labels(stream).inc()

    def stream_closed(self, stream: Stream) -> None:
        self.streams.labels(stream).dec()

    def set_svid_expiry(self, spiffe_id: str, not_after: dt.datetime) -> None:
        if not_after.tzinfo is None:
            raise ConfigError(
                f"SVID expiry for {spiffe_id} must be timezone-aware, got {not_after}"
            )
        self.svid_expiry.labels(spiffe_id).set(not_after.timestamp())

    def forget_svid(self, spiffe_id: str) -> None:
        """A workload left the node: drop its expiry series."""
        with contextlib.suppress(KeyError):
            self.svid_expiry.remove(spiffe_id)


def start_metrics_server(host: str, port: int, metrics: AgentMetrics) -> tuple[str, int]:
    """Serve the registry over HTTP in a daemon thread; returns the bound (host, port)."""
    return serve_registry(host, port, metrics.registry)
