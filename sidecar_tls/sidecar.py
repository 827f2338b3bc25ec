"""The sidecar process: listeners, identity, mesh state, policy, telemetry, admin, wired together.

`Sidecar` runs in a pod's network namespace as uid 1337 (after the interception rules), or on the
host as the ingress gateway (`Ingress`: plain HTTP/1.1 or h2c in, mTLS out to one routed service).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import re
import socket
from dataclasses import asdict, dataclass
from typing import Any

from meshward_common import ports
from meshward_common.errors import ConfigError
from sidecar_tls.admin import HttpServer, admin_app, health_app, serve_app
from sidecar_tls.answers import REQUEST_TIMEOUT_S
from sidecar_tls.authz import InboundAuthorizer
from sidecar_tls.destinations import Destination, MeshSnapshot, OutboundPolicy, resolve_destination
from sidecar_tls.draining import DRAIN_S
from sidecar_tls.identity import SvidSource, WorkloadApiSvidSource, WorkloadIdentity
from sidecar_tls.proxy.inbound import InboundProxy
from sidecar_tls.proxy.net import listen_socket, serve_accepts
from sidecar_tls.proxy.outbound import OutboundProxy
from sidecar_tls.state import SidecarState
from sidecar_tls.telemetry.observe import CompositeObserver, HopObserver, NoopObserver
from sidecar_tls.workload_api.mesh_state import follow_mesh_state

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SidecarConfig:
    agent_socket: str
    pod_ip: str
    workload: str
    namespace: str
    outbound_policy: OutboundPolicy = "ALLOW_ANY"
    otlp_endpoint: str | None = None
    trace_sampling: float = 1.0  # percent of new traces sampled (Istio's default profile: 1 %)
    service: str = ""  # tracing/metrics service name; default: workload name without -v<N>
    bind: str = "0.0.0.0"
    outbound_port: int = ports.OUTBOUND
    inbound_port: int = ports.INBOUND
    health_port: int = ports.HEALTH
    admin_port: int = ports.ADMIN
    metrics_port: int = ports.PROMETHEUS  # 0: no metrics endpoint
    # The app's rewritten HTTP probes (ISTIO_KUBE_APP_PROBERS JSON), served on status_port.
    app_probers: str = ""
    status_port: int = ports.AGENT_STATUS
    # Seconds an upstream has to begin its response (Envoy's route timeout; 0: none), and how long a
    # stopping sidecar lets open requests finish (Istio's terminationDrainDuration).
    request_timeout: float = REQUEST_TIMEOUT_S
    drain_s: float = DRAIN_S

    @property
    def service_name(self) -> str:
        return self.service or re.sub(r"-v\d+$", "", self.workload)


def freeze_startup_heap() -> None:
    """Once started: what startup made (modules, the SDKs, tables; ~44 000 objects) is moved out
    of the cyclic collector's reach. Each full collection otherwise walks all of it: 40-50 ms in
    which no request moves (`python -m bench grpc`, a gen2 collection every ~6 000 calls), the
    largest pause in the sidecar's tail latency; frozen, 1-3 ms. The data path makes almost no
    cyclic garbage (gen0/gen1 collected nothing during the bench); the collector still runs for
    what is made later."""
    gc.collect()
    gc.freeze()


def build_observer(
    service: str,
    namespace: str,
    pod_name: str,
    pod_ip: str,
    otlp_endpoint: str | None,
    trace_sampling: float = 1.0,
) -> tuple[HopObserver, Any, Any]:
    """(observer, metrics observer or None, tracing observer or None); telemetry modules are
    optional so the data path runs without them. Tracing is always on, as in Istio: without a
    collector, trace context and x-request-id are still propagated (sampled spans are dropped)."""
    observers: list[HopObserver] = []
    metrics = tracing = None
    try:
        from sidecar_tls.telemetry.metrics import MetricsObserver

        metrics = MetricsObserver()
        observers.append(metrics)
    except ImportError as exc:  # telemetry not installed: the data path still runs
        log.warning("metrics disabled: %s", exc)
    try:
        from sidecar_tls.telemetry.tracing import TracingObserver

        tracing = TracingObserver(
            service,
            namespace,
            otlp_endpoint,
            pod_name=pod_name,
            pod_ip=pod_ip,
            sampling=trace_sampling,
        )
        observers.append(tracing)
    except ImportError as exc:
        log.warning("tracing disabled: %s", exc)
    if not observers:
        return NoopObserver(), None, None
    if len(observers) == 1:
        return observers[0], metrics, tracing
    return CompositeObserver(observers), metrics, tracing


class Sidecar:
    def __init__(
        self,
        config: SidecarConfig,
        svids: SvidSource | None = None,
        observer: HopObserver | None = None,
    ) -> None:
        self.config = config
        self.svids = svids or WorkloadApiSvidSource(config.agent_socket)
        self.state = SidecarState(self.svids)
        self._labels: dict[str, str] = {}
        self.authorizer = InboundAuthorizer(config.namespace, self._labels)
        self._metrics: Any = None
        self._tracing: Any = None
        if observer is None:
            observer, self._metrics, self._tracing = build_observer(
                config.service_name,
                config.namespace,
                config.workload,
                config.pod_ip,
                config.otlp_endpoint,
                config.trace_sampling,
            )
        self.observer = observer
        self.outbound = OutboundProxy(
            self.state,
            workload=config.workload,
            namespace=config.namespace,
            outbound_policy=config.outbound_policy,
            observer=observer,
            request_timeout=config.request_timeout,
            drain_s=config.drain_s,
        )
        self.inbound = InboundProxy(
            self.state,
            self.authorizer,
            pod_ip=config.pod_ip,
            workload=config.workload,
            namespace=config.namespace,
            service=f"{config.service_name}.{config.namespace}.svc.cluster.local",
            observer=observer,
            request_timeout=config.request_timeout,
            drain_s=config.drain_s,
        )
        self.listening = False
        self._tasks: list[asyncio.Task[None]] = []
        self._runners: list[HttpServer] = []
        self.health_server: HttpServer | None = None  # set by start(); `.port` is the bound port
        self.admin_server: HttpServer | None = None
        self.svids.subscribe(self._on_identity)
        self.state.on_snapshot(self._on_snapshot)

    def _on_identity(self, identity: WorkloadIdentity) -> None:
        if self._metrics is not None:
            self._metrics.set_svid_expiry(
                str(identity.spiffe_id), identity.leaf.not_valid_after_utc
            )

    def _on_snapshot(self, snapshot: MeshSnapshot) -> None:
        me = snapshot.find(self.config.workload, self.config.namespace)
        if me is not None and dict(me.labels) != self._labels:
            # Policies select workloads by labels, fixed when the adapter is made: remake it
            # when ours become known or change.
            self._labels = dict(me.labels)
            self.authorizer = InboundAuthorizer(self.config.namespace, self._labels)
            self.inbound.authorizer = self.authorizer
        self.authorizer.update(list(snapshot.policies), snapshot.root_namespace)

    def ready(self) -> bool:
        return self.state.ready and self.listening

    def config_dump(self) -> dict[str, Any]:
        snapshot = self.state.snapshot
        return {
            "config": asdict(self.config),
            "spiffe_id": self.state.material.spiffe_id if self.state.ready else None,
            "mesh_state_version": snapshot.version,
            "trust_domain": snapshot.trust_domain,
            "workloads": [asdict(w) for w in snapshot.workloads],
            "policies": [{"source": s, "yaml": y} for s, y in snapshot.policies],
            "listeners": {
                "outbound": f"{self.config.bind}:{self.config.outbound_port}",
                "inbound": f"{self.config.bind}:{self.config.inbound_port}",
            },
            "tls_generation": self.state.material.generation if self.state.ready else None,
            "pooled_handshakes": self.outbound.pool.handshakes,
        }

    async def start(self) -> None:
        c = self.config
        await self.svids.start()
        self._tasks.append(
            asyncio.create_task(follow_mesh_state(c.agent_socket, self.state.set_snapshot))
        )
        self.health_server = await serve_app(health_app(self.ready), c.bind, c.health_port)
        self._runners.append(self.health_server)
        if c.app_probers:
            from sidecar_tls.app_probes import parse_probers, serve_app_probes

            probers = parse_probers(c.app_probers)
            self._runners.append(await serve_app_probes(probers, c.pod_ip, c.bind, c.status_port))
        self.admin_server = await serve_app(
            admin_app(self.state, self.config_dump), "127.0.0.1", c.admin_port
        )
        self._runners.append(self.admin_server)
        if self._metrics is not None and c.metrics_port:
            from sidecar_tls.telemetry.metrics import serve

            self._runners.append(await serve(c.bind, c.metrics_port, self._metrics.registry))
        outbound_sock = _listen(c.bind, c.outbound_port)
        inbound_sock = _listen(c.bind, c.inbound_port)
        self._tasks.append(asyncio.create_task(serve_accepts(outbound_sock, self.outbound.handle)))
        self._tasks.append(asyncio.create_task(serve_accepts(inbound_sock, self.inbound.handle)))
        self.listening = True
        log.info(
            "sidecar %s.%s listening: outbound %d, inbound %d, health %d, admin 127.0.0.1:%d",
            c.workload,
            c.namespace,
            c.outbound_port,
            c.inbound_port,
            c.health_port,
            c.admin_port,
        )

    async def stop(self) -> None:
        self.listening = False
        await _stop(self._tasks, self._runners)
        self.outbound.pool.close_all()
        self.svids.close()
        if self._tracing is not None:
            self._tracing.shutdown()


@dataclass(frozen=True)
class IngressConfig:
    agent_socket: str
    listen: tuple[str, int]
    route: tuple[str, int]  # host (service name or IP) and port
    otlp_endpoint: str | None = None
    trace_sampling: float = 1.0
    name: str = "ingress"
    namespace: str = "default"
    request_timeout: float = REQUEST_TIMEOUT_S  # as SidecarConfig's
    drain_s: float = DRAIN_S


class Ingress:
    """Plain HTTP on the host, mTLS with the ingress's own SVID to the routed service: HTTP/1.1
    per request on pooled connections, and HTTP/2 (h2c prior knowledge, gRPC) per stream over
    ALPN h2, by the outbound proxy's own codecs (each stream its own span, metrics, context)."""

    def __init__(
        self,
        config: IngressConfig,
        svids: SvidSource | None = None,
        observer: HopObserver | None = None,
    ) -> None:
        self.config = config
        self.svids = svids or WorkloadApiSvidSource(config.agent_socket)
        self.state = SidecarState(self.svids)
        self._tracing: Any = None
        if observer is None:
            observer, _, self._tracing = build_observer(
                config.name,
                config.namespace,
                config.name,
                config.listen[0],
                config.otlp_endpoint,
                config.trace_sampling,
            )
        self._rr = itertools.count()
        self.proxy = OutboundProxy(
            self.state,
            workload=config.name,
            namespace=config.namespace,
            outbound_policy="REGISTRY_ONLY",
            observer=observer,
            destination_for=lambda _sock: self.destination(),
            http_only=True,
            request_timeout=config.request_timeout,
            drain_s=config.drain_s,
        )
        self._tasks: list[asyncio.Task[None]] = []
        self.port = 0

    def destination(self) -> Destination | None:
        host, port = self.config.route
        snapshot = self.state.snapshot
        addresses = snapshot.addresses_of(host)
        if not addresses:
            log.warning("ingress: no address for route %s:%d in the mesh state", host, port)
            return None
        ip = addresses[next(self._rr) % len(addresses)]
        return resolve_destination(snapshot, ip, port)

    async def start(self, follow_agent: bool = True) -> None:
        """`follow_agent=False`: keep the mesh snapshot set through `state` (tests)."""
        await self.svids.start()
        if follow_agent:
            self._tasks.append(
                asyncio.create_task(
                    follow_mesh_state(self.config.agent_socket, self.state.set_snapshot)
                )
            )
        sock = _listen(*self.config.listen)
        self.port = sock.getsockname()[1]
        self._tasks.append(asyncio.create_task(serve_accepts(sock, self.proxy.handle)))
        log.info("ingress on %s:%d -> %s:%d", self.config.listen[0], self.port, *self.config.route)

    async def stop(self) -> None:
        await _stop(self._tasks, [])
        self.proxy.pool.close_all()
        self.svids.close()
        if self._tracing is not None:
            self._tracing.shutdown()


def _listen(host: str, port: int) -> socket.socket:
    try:
        return listen_socket(host, port)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc


async def _stop(tasks: list[asyncio.Task[None]], runners: list[HttpServer]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    tasks.clear()
    for runner in runners:
        await runner.cleanup()
    runners.clear()
