"""The sidecar's tracing: one OpenTelemetry span per HTTP hop, reported the way Istio's Envoy does.

`TracingObserver` implements `sidecar_tls.telemetry.observe.HopObserver`. An inbound request gets a SERVER span,
an outbound one a CLIENT span, both named `<destination service>:<port>/*` (Istio's route decorator)
and tagged with Envoy's and Istio's tracing tags, plus the peer's SPIFFE ID. The trace context is read
from W3C `traceparent`/`tracestate` or B3 (multi-header or single `b3`) and written back as W3C and B3
multi-header (and single `b3` when the caller used it); a request without any starts a new trace here.

Sampling is Istio's (`sidecar_tls.telemetry.sampling`): a percentage for new traces, the caller's decision
when it made one, forced by `x-client-trace-id`. Only sampled requests make SDK spans; the others
get their context headers and x-request-id from a few string operations.

Spans leave through a `BatchSpanProcessor` and an OTLP/HTTP exporter with short timeouts: the data
path only appends to an in-memory queue, so an absent or slow collector costs a request nothing.
Export failures are logged once (and recovery once), not per batch.
"""

from __future__ import annotations

import logging
import os
import random
import threading
from collections.abc import Mapping, Sequence
from typing import Final
from urllib.parse import urlparse

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.b3 import B3MultiFormat, B3SingleFormat
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from meshward_common.errors import ConfigError
from meshward_common.telemetry import trace_service_name
from sidecar_tls.http1.head import HeaderView
from sidecar_tls.telemetry.observe import NOOP_BOUND, BoundHop, Hop, HopSpan
from sidecar_tls.telemetry.sampling import (
    CONTEXT_HEADERS,
    FORCE_HEADERS,
    Lookup,
    decide,
    fresh_ids,
    new_span_id,
    parse_traceparent,
    unsampled_headers,
)

# Istio's default profile samples 1 % of new traces (meshConfig defaultConfig.tracing.sampling).
DEFAULT_SAMPLING: Final = 1.0

log = logging.getLogger(__name__)

ENDPOINT_ENV: Final = "OTEL_EXPORTER_OTLP_ENDPOINT"
# Attribute carrying the peer's SPIFFE ID (the caller's on inbound, the server's on outbound).
PEER_PRINCIPAL: Final = "peer.principal"
# The batch processor logs every failed export; we report failures once ourselves.
_NOISY_LOGGERS: Final = ("opentelemetry.sdk._shared_internal",)

_w3c: Final = TraceContextTextMapPropagator()
_b3_multi: Final = B3MultiFormat()
_b3_single: Final = B3SingleFormat()


def resolve_endpoint(explicit: str | None, environ: Mapping[str, str]) -> str | None:
    """The OTLP/HTTP endpoint to export to: the explicit one (mesh config, `--otlp-endpoint`), else
    `OTEL_EXPORTER_OTLP_ENDPOINT`, else None (spans are made and propagated but not exported)."""
    endpoint = explicit or environ.get(ENDPOINT_ENV, "") or None
    if endpoint is None:
        return None
    parsed = urlparse(endpoint if "://" in endpoint else f"http://{endpoint}")
    if parsed.scheme not in ("http", "https") or not parsed.hostname or parsed.port is None:
        raise ConfigError(
            f"OTLP endpoint {endpoint!r} must look like http://host:port (e.g. http://127.0.0.1:4318)"
        )
    return f"{parsed.scheme}://{parsed.netloc}"


def extract_context(headers: Mapping[str, str]) -> Context | None:
    """The caller's trace context: W3C first (Istio's default), then B3 single or multi-header.
    None when the request carries no valid context (this hop starts a trace)."""
    for propagator in (_w3c, _b3_multi):  # B3MultiFormat.extract also reads the single `b3` header
        ctx = propagator.extract(headers)
        if trace.get_current_span(ctx).get_span_context().is_valid:
            return ctx
    return None


def operation_name(hop: Hop) -> str:
    """Istio names a sidecar span after its route: `<service host>:<port>/*`."""
    service = hop.destination_service or hop.authority or "unknown"
    if ":" not in service:
        port = _port_of(hop.upstream_address) or _port_of(hop.authority)
        if port:
            service = f"{service}:{port}"
    return f"{service}/*"


def upstream_cluster(hop: Hop) -> str:
    """Envoy's cluster name for the hop: `outbound|<port>||<service>` / `inbound|<port>||`."""
    port = _port_of(hop.upstream_address)
    if hop.direction == "inbound":
        return f"inbound|{port}||"
    host = hop.destination_service.rsplit(":", 1)[0] if hop.destination_service else ""
    return f"outbound|{port}||{host}"


def start_attributes(hop: Hop, service: str, namespace: str, node_id: str) -> dict[str, str]:
    """The tags Envoy (component, node_id, http.*, peer.address, upstream_*) and Istio (istio.*)
    put on a sidecar span at request time, plus the SPIFFE IDs of both ends."""
    attrs = {
        "component": "proxy",
        "node_id": node_id,
        "istio.canonical_service": service,
        "istio.namespace": namespace,
        "http.method": hop.method,
        "http.url": f"http://{hop.authority or hop.destination_service}{hop.path}",
        "http.protocol": "HTTP/2" if hop.http_version == "2" else "HTTP/1.1",
        "upstream_cluster": upstream_cluster(hop),
        "upstream_cluster.name": upstream_cluster(hop),
        "upstream_address": hop.upstream_address,
        "peer.address": hop.downstream_address,
        "connection_security_policy": "mutual_tls" if hop.mutual_tls else "none",
    }
    peer = hop.source_principal if hop.direction == "inbound" else hop.destination_principal
    if peer:
        attrs[PEER_PRINCIPAL] = peer
    if hop.source_principal:
        attrs["source.principal"] = hop.source_principal
    if hop.destination_principal:
        attrs["destination.principal"] = hop.destination_principal
    return {k: v for k, v in attrs.items() if v}


def _port_of(address: str) -> str:
    host, sep, port = address.rpartition(":")
    return port if sep and host and port.isdigit() else ""


class _HttpSpan(HopSpan):
    """One hop's span; `finish` is idempotent so a data-path double call cannot corrupt a trace."""

    __slots__ = ("_done", "_inject", "_span")

    def __init__(self, span: trace.Span, inject: Sequence[tuple[str, str]]) -> None:
        self._span = span
        self._inject = inject
        self._done = False

    def inject(self) -> Sequence[tuple[str, str]]:
        return self._inject

    def finish(
        self, status: int, response_bytes: int, error: str | None = None, grpc_status: int = -1
    ) -> None:
        if self._done:
            return
        self._done = True
        span = self._span
        span.set_attribute("http.status_code", str(status))
        span.set_attribute("response_size", str(response_bytes))
        failed = bool(error) or status >= 500 or status == 0
        if grpc_status >= 0:
            # Envoy's gRPC tags: the call's status decides, whatever the HTTP status (200).
            span.set_attribute("grpc.status_code", str(grpc_status))
            failed = failed or grpc_status != 0
            if error:
                span.set_attribute("grpc.message", error)
        if failed:
            # Envoy marks 5xx and upstream failures with error=true; the reason is in response_flags.
            span.set_attribute("error", "true")
            reason = error or (
                f"gRPC status {grpc_status}" if grpc_status > 0 else f"HTTP {status}"
            )
            span.set_status(Status(StatusCode.ERROR, reason))
        span.end()


class _UnsampledSpan(HopSpan):
    """A request not sampled: context headers to forward, nothing to record."""

    __slots__ = ("_inject",)

    def __init__(self, inject: Sequence[tuple[str, str]]) -> None:
        self._inject = inject

    def inject(self) -> Sequence[tuple[str, str]]:
        return self._inject

    def finish(
        self, status: int, response_bytes: int, error: str | None = None, grpc_status: int = -1
    ) -> None:
        return None


_AS_IT_CAME: Final = _UnsampledSpan(())  # not sampled, the caller's context forwarded unchanged


def request_id() -> str:
    """A random (version 4) UUID, like Envoy's x-request-id, without uuid.UUID objects."""
    return format_request_id(f"{random.getrandbits(128):032x}")


def format_request_id(h: str) -> str:
    """32 random hex digits as a version-4 UUID string."""
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


def _sampled_parent(ctx: Context | None) -> Context | None:
    """The caller's context with its sampled flag set: a forced trace (or one the caller left to
    us, B3 deferred) continues the caller's trace id, and the SDK's parent-based sampler keeps it."""
    if ctx is None:
        return None
    parent = trace.get_current_span(ctx).get_span_context()
    if parent.trace_flags.sampled:
        return ctx
    flagged = SpanContext(
        parent.trace_id,
        parent.span_id,
        is_remote=True,
        trace_flags=TraceFlags(parent.trace_flags | TraceFlags.SAMPLED),
        trace_state=parent.trace_state,
    )
    return trace.set_span_in_context(NonRecordingSpan(flagged), ctx)


class _BoundTracing(BoundHop):
    """One connection's hops: what a span needs that does not change per request, made once."""

    __slots__ = ("_attrs", "_base", "_kind", "_observer")

    def __init__(self, observer: TracingObserver, base: Hop) -> None:
        self._observer = observer
        self._base = base
        self._kind = SpanKind.SERVER if base.direction == "inbound" else SpanKind.CLIENT
        self._attrs = start_attributes(
            base, observer.service_name, observer.namespace, observer.node_id
        )

    def request(
        self, method: str, path: str, authority: str, headers: Mapping[str, str]
    ) -> HopSpan:
        # A sampling draw, not a secret: the fast generator is the right one (Envoy's too).
        draw = random.random()  # noqa: S311
        # HTTP/1.1: every header read here is one the parser picked out already; HTTP/2: the
        # head's headers by name. Plain dicts either way (C-level lookups).
        wanted = (
            headers.wanted
            if isinstance(headers, HeaderView)
            else headers
            if isinstance(headers, dict)
            else None
        )
        if wanted is not None:
            get: Lookup = wanted.get
            names = wanted.keys()
            if names.isdisjoint(CONTEXT_HEADERS):
                if draw * 100.0 >= self._observer.sampling:
                    # The usual first hop: no context, not sampled. What `decide` would conclude.
                    trace_id, span_id, rid_hex = fresh_ids()
                    out = unsampled_headers(trace_id, span_id, b3_single=False)
                    if not get("x-request-id"):
                        out.append(("x-request-id", format_request_id(rid_hex)))
                    return _UnsampledSpan(out)
            elif "traceparent" in names and names.isdisjoint(FORCE_HEADERS):
                parent = parse_traceparent(wanted["traceparent"])
                if parent is not None and not parent[2]:
                    # The usual later hop: the caller's W3C context says not sampled, and it
                    # wins over any B3 headers. What `decide` would conclude: the context goes
                    # on as it came.
                    if get("x-request-id"):
                        return _AS_IT_CAME
                    return _UnsampledSpan([("x-request-id", request_id())])
        else:
            get = headers.get
        decision = decide(get, self._observer.sampling, draw)
        rid = get("x-request-id")
        if not decision.sampled:
            if decision.inherited:
                # The caller's context already carries the trace and its "not sampled": forwarded
                # as it came (no span here, so no span id of ours to put in it).
                out = []
            else:
                out = unsampled_headers(
                    decision.trace_id, new_span_id(), b3_single=get("b3") is not None
                )
            if not rid:
                out.append(("x-request-id", request_id()))
            return _UnsampledSpan(out)
        return self._sampled(method, path, authority, headers, rid)

    def _sampled(
        self, method: str, path: str, authority: str, headers: Mapping[str, str], rid: str | None
    ) -> HopSpan:
        base = self._base
        hop = Hop(
            direction=base.direction,
            protocol=base.protocol,
            method=method,
            path=path,
            authority=authority,
            destination_service=base.destination_service,
            upstream_address=base.upstream_address,
        )
        attrs = dict(self._attrs)
        if method:
            attrs["http.method"] = method
        attrs["http.url"] = f"http://{authority or base.destination_service}{path}"
        out: list[tuple[str, str]] = []
        if not rid:
            rid = request_id()
            out.append(("x-request-id", rid))
        attrs["guid:x-request-id"] = rid
        user_agent = headers.get("user-agent")
        if user_agent is not None:
            attrs["user_agent"] = user_agent
        if base.protocol == "grpc":  # Envoy's gRPC request tags
            attrs["grpc.path"] = path
            attrs["grpc.authority"] = authority
            attrs["grpc.content_type"] = headers.get("content-type") or ""
        span = self._observer._tracer.start_span(
            operation_name(hop),
            context=_sampled_parent(extract_context(headers)),
            kind=self._kind,
            attributes=attrs,
        )
        out.extend(_inject_headers(span, use_b3_single=headers.get("b3") is not None))
        return _HttpSpan(span, out)


class _ReportOnceExporter(SpanExporter):
    """Wraps the OTLP exporter so that a dead collector is reported once, not once per batch, and
    never raises into the batch worker."""

    def __init__(self, inner: SpanExporter, endpoint: str) -> None:
        self._inner = inner
        self._endpoint = endpoint
        self._failing = False
        self.failures = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self._inner.export(spans)
        except Exception as exc:  # the exporter's own bugs must not kill the worker thread
            log.debug("OTLP export raised", exc_info=exc)
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            if self._failing:
                log.info("tracing: OTLP collector at %s answers again", self._endpoint)
            self._failing = False
            return result
        self.failures += 1
        if not self._failing:
            log.warning(
                "tracing: cannot export spans to OTLP collector at %s; dropping them until it "
                "answers (reported once)",
                self._endpoint,
            )
        self._failing = True
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


def _quiet_otel_exporter_logs() -> None:
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)


class TracingObserver:
    """`HopObserver` producing OpenTelemetry spans for a sidecar of `<service>.<namespace>`.

    `endpoint`: OTLP/HTTP collector (e.g. `http://127.0.0.1:4318`, spans go to `/v1/traces`); None falls back to
    `OTEL_EXPORTER_OTLP_ENDPOINT`; with neither, spans are propagated but not exported.
    `exporter` replaces the OTLP exporter (tests). Call `shutdown()` on exit to flush.
    """

    def __init__(
        self,
        service: str,
        namespace: str,
        endpoint: str | None = None,
        *,
        pod_name: str = "",
        pod_ip: str = "",
        export_timeout_s: float = 2.0,
        schedule_delay_ms: int = 1000,
        max_queue_size: int = 4096,
        exporter: SpanExporter | None = None,
        environ: Mapping[str, str] | None = None,
        sampling: float = DEFAULT_SAMPLING,
    ) -> None:
        if not 0.0 <= sampling <= 100.0:
            raise ConfigError(f"trace sampling {sampling} is not a percentage (0 to 100)")
        self.sampling = sampling  # percent of new traces sampled
        self.service = service
        self.namespace = namespace
        self.service_name = trace_service_name(service, namespace)
        # Istio's sidecar node id: sidecar~<pod ip>~<pod>.<namespace>~<namespace>.svc.cluster.local
        self.node_id = (
            f"sidecar~{pod_ip or '0.0.0.0'}~{pod_name or service}.{namespace}~"
            f"{namespace}.svc.cluster.local"
        )
        self.endpoint = resolve_endpoint(endpoint, os.environ if environ is None else environ)
        resource = Resource.create(
            {
                "service.name": self.service_name,
                "service.namespace": namespace,
                "k8s.namespace.name": namespace,
                "k8s.pod.name": pod_name or service,
            }
        )
        self._provider = TracerProvider(resource=resource)
        self._exporter: _ReportOnceExporter | None = None
        if exporter is None and self.endpoint is not None:
            # OTLP/HTTP with the stdlib: the grpc exporter alone costs ~20 MB RSS per sidecar.
            from sidecar_tls.telemetry.otlp_http import OtlpHttpSpanExporter

            _quiet_otel_exporter_logs()
            exporter = OtlpHttpSpanExporter(self.endpoint, timeout_s=export_timeout_s)
        if exporter is not None:
            self._exporter = _ReportOnceExporter(exporter, self.endpoint or "(custom exporter)")
            self._provider.add_span_processor(
                BatchSpanProcessor(
                    self._exporter,
                    max_queue_size=max_queue_size,
                    schedule_delay_millis=schedule_delay_ms,
                    export_timeout_millis=int(export_timeout_s * 1000),
                )
            )
        self._tracer = self._provider.get_tracer("meshward.sidecar")
        self._lock = threading.Lock()
        self._closed = False

    @property
    def export_failures(self) -> int:
        return self._exporter.failures if self._exporter else 0

    def start(self, hop: Hop, headers: Mapping[str, str]) -> HopSpan:
        return self.bind(hop).request(hop.method, hop.path, hop.authority, headers)

    def bind(self, base: Hop) -> BoundHop:
        if base.protocol == "tcp":
            return NOOP_BOUND  # Envoy traces HTTP only; TCP connections show up in metrics
        return _BoundTracing(self, base)

    def force_flush(self, timeout_s: float = 5.0) -> bool:
        return self._provider.force_flush(int(timeout_s * 1000))

    def shutdown(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._provider.shutdown()


def _inject_headers(span: trace.Span, *, use_b3_single: bool) -> list[tuple[str, str]]:
    carrier: dict[str, str] = {}
    ctx = trace.set_span_in_context(span)
    _w3c.inject(carrier, context=ctx)
    _b3_multi.inject(carrier, context=ctx)
    if use_b3_single:
        _b3_single.inject(carrier, context=ctx)
    return list(carrier.items())
