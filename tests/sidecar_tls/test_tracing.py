"""TracingObserver against an in-memory exporter: span kinds, names, Istio/Envoy tags, W3C and B3
propagation both ways, x-request-id, and a collector that is absent or never answers."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from meshward_common.errors import ConfigError
from sidecar_tls.telemetry.observe import Hop
from sidecar_tls.telemetry.tracing import TracingObserver, extract_context, resolve_endpoint

A_ID = "spiffe://cluster.local/ns/default/sa/a"
B_ID = "spiffe://cluster.local/ns/default/sa/b"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"

INBOUND = Hop(
    direction="inbound",
    protocol="http",
    method="GET",
    path="/reviews/1?x=1",
    authority="b:9080",
    source_principal=A_ID,
    destination_principal=B_ID,
    source_workload="a",
    source_namespace="default",
    destination_workload="b",
    destination_namespace="default",
    destination_service="b.default.svc.cluster.local",
    upstream_address="10.213.48.3:9080",
    downstream_address="10.213.48.2:41000",
    mutual_tls=True,
)
OUTBOUND = Hop(
    direction="outbound",
    protocol="http",
    method="POST",
    path="/ratings",
    authority="c:9080",
    source_principal=B_ID,
    destination_principal="spiffe://cluster.local/ns/default/sa/c",
    destination_service="c.default.svc.cluster.local",
    upstream_address="10.213.48.4:9080",
    downstream_address="10.213.48.3:50000",
    mutual_tls=True,
)


@pytest.fixture
def exported() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer(exported: InMemorySpanExporter) -> Iterator[TracingObserver]:
    obs = TracingObserver(
        "b",
        "default",
        pod_name="b-1",
        pod_ip="10.213.48.3",
        exporter=exported,
        environ={},
        sampling=100.0,  # Istio's demo profile: every new trace sampled
    )
    yield obs
    obs.shutdown()


def _only(obs: TracingObserver, exported: InMemorySpanExporter) -> ReadableSpan:
    assert obs.force_flush()
    spans = exported.get_finished_spans()
    assert len(spans) == 1
    return spans[0]


def test_inbound_is_a_server_span_named_and_tagged_like_istio(tracer, exported):
    tracer.start(INBOUND, {"user-agent": "curl/8"}).finish(200, 1234)
    span = _only(tracer, exported)
    assert span.kind is SpanKind.SERVER
    assert span.name == "b.default.svc.cluster.local:9080/*"
    assert span.resource.attributes["service.name"] == "b.default"
    attrs = dict(span.attributes or {})
    assert attrs["http.method"] == "GET"
    assert attrs["http.url"] == "http://b:9080/reviews/1?x=1"
    assert attrs["http.status_code"] == "200"
    assert attrs["response_size"] == "1234"
    assert attrs["peer.principal"] == A_ID  # inbound: the caller's identity
    assert attrs["source.principal"] == A_ID
    assert attrs["upstream_cluster"] == "inbound|9080||"
    assert attrs["peer.address"] == "10.213.48.2:41000"
    assert attrs["istio.canonical_service"] == "b.default"
    assert attrs["istio.namespace"] == "default"
    assert attrs["node_id"] == "sidecar~10.213.48.3~b-1.default~default.svc.cluster.local"
    assert attrs["component"] == "proxy"
    assert attrs["user_agent"] == "curl/8"
    assert "error" not in attrs
    assert span.status.status_code is StatusCode.UNSET


def test_outbound_is_a_client_span_with_the_servers_identity(tracer, exported):
    tracer.start(OUTBOUND, {}).finish(201, 5)
    span = _only(tracer, exported)
    attrs = dict(span.attributes or {})
    assert span.kind is SpanKind.CLIENT
    assert span.name == "c.default.svc.cluster.local:9080/*"
    assert attrs["peer.principal"] == "spiffe://cluster.local/ns/default/sa/c"
    assert attrs["upstream_cluster"] == "outbound|9080||c.default.svc.cluster.local"
    assert attrs["upstream_address"] == "10.213.48.4:9080"


def test_server_errors_and_upstream_failures_are_marked_error(tracer, exported):
    tracer.start(INBOUND, {}).finish(503, 0)
    tracer.start(OUTBOUND, {}).finish(0, 0, "connect refused")
    tracer.start(INBOUND, {}).finish(403, 19)
    assert tracer.force_flush()
    by_code = {
        dict(s.attributes or {})["http.status_code"]: s for s in exported.get_finished_spans()
    }
    assert by_code["503"].status.status_code is StatusCode.ERROR
    assert by_code["0"].status.description == "connect refused"
    assert dict(by_code["0"].attributes or {})["error"] == "true"
    assert by_code["403"].status.status_code is StatusCode.UNSET


def test_finish_twice_records_one_span(tracer, exported):
    span = tracer.start(INBOUND, {})
    span.finish(200, 1)
    span.finish(500, 1)
    assert dict(_only(tracer, exported).attributes or {})["http.status_code"] == "200"


def test_no_trace_headers_starts_a_trace_and_adds_request_id(tracer, exported):
    hop_span = tracer.start(INBOUND, {})
    injected = dict(hop_span.inject())
    hop_span.finish(200, 1)
    span = _only(tracer, exported)
    assert span.parent is None
    ctx = span.get_span_context()
    version, trace_id, span_id, flags = injected["traceparent"].split("-")
    assert (version, trace_id, span_id) == ("00", f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}")
    assert int(flags, 16) & 1 == 1  # sampled (bit 2, "random trace id", may be set too)
    assert injected["x-b3-traceid"] == f"{ctx.trace_id:032x}"
    assert injected["x-b3-spanid"] == f"{ctx.span_id:016x}"
    assert injected["x-b3-sampled"] == "1"
    assert "b3" not in injected  # single-header B3 only when the caller used it
    assert len(injected["x-request-id"]) == 36
    assert dict(span.attributes or {})["guid:x-request-id"] == injected["x-request-id"]


def test_existing_request_id_is_kept_not_replaced(tracer, exported):
    hop_span = tracer.start(INBOUND, {"x-request-id": "req-1"})
    injected = dict(hop_span.inject())
    hop_span.finish(200, 1)
    assert "x-request-id" not in injected
    assert dict(_only(tracer, exported).attributes or {})["guid:x-request-id"] == "req-1"


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(
            {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "tracestate": "vendor=x"}, id="w3c"
        ),
        pytest.param(
            {"x-b3-traceid": TRACE_ID, "x-b3-spanid": PARENT_ID, "x-b3-sampled": "1"}, id="b3-multi"
        ),
        pytest.param({"b3": f"{TRACE_ID}-{PARENT_ID}-1"}, id="b3-single"),
    ],
)
def test_incoming_context_is_continued_and_written_onward(tracer, exported, headers):
    hop_span = tracer.start(INBOUND, headers)
    injected = dict(hop_span.inject())
    hop_span.finish(200, 1)
    span = _only(tracer, exported)
    assert span.parent is not None
    assert f"{span.parent.trace_id:032x}" == TRACE_ID
    assert f"{span.parent.span_id:016x}" == PARENT_ID
    own = f"{span.get_span_context().span_id:016x}"
    assert injected["traceparent"].startswith(f"00-{TRACE_ID}-{own}-")
    assert int(injected["traceparent"][-2:], 16) & 1 == 1
    assert injected["x-b3-traceid"] == TRACE_ID
    assert injected["x-b3-spanid"] == own
    if "tracestate" in headers:
        assert injected["tracestate"] == "vendor=x"
    if "b3" in headers:
        assert injected["b3"] == f"{TRACE_ID}-{own}-1"


def test_unsampled_parent_is_respected(tracer, exported):
    hop_span = tracer.start(INBOUND, {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"})
    injected = dict(hop_span.inject())
    hop_span.finish(200, 1)
    assert tracer.force_flush()
    assert exported.get_finished_spans() == ()
    # Nothing is recorded here, so the caller's "not sampled" context goes on as it came (it is
    # left in the request, not rewritten); only the missing x-request-id is added.
    assert set(injected) == {"x-request-id"}


@pytest.mark.parametrize(
    "headers",
    [
        {"traceparent": "garbage"},
        {"traceparent": f"00-{'0' * 32}-{PARENT_ID}-01"},
        {"x-b3-traceid": "xyz", "x-b3-spanid": "1"},
        {},
    ],
)
def test_invalid_or_missing_context_is_ignored(headers):
    assert extract_context(headers) is None


def test_tcp_hops_make_no_span(tracer, exported):
    span = tracer.start(Hop(direction="inbound", protocol="tcp"), {})
    assert span.inject() == ()
    span.finish(0, 100)
    assert tracer.force_flush()
    assert exported.get_finished_spans() == ()


def test_endpoint_comes_from_argument_then_environment():
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}
    assert resolve_endpoint("http://10.0.0.1:4317", env) == "http://10.0.0.1:4317"
    assert resolve_endpoint(None, env) == "http://127.0.0.1:4317"
    assert resolve_endpoint(None, {}) is None
    assert resolve_endpoint("127.0.0.1:4317", {}) == "http://127.0.0.1:4317"
    for bad in ("ftp://x:1", "http://nohost", "http://:4317"):
        with pytest.raises(ConfigError, match="OTLP endpoint"):
            resolve_endpoint(bad, {})


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(params=["absent", "silent"])
def dead_collector(request) -> Iterator[str]:
    """An OTLP endpoint nobody serves (absent) or one that accepts TCP and never answers (silent)."""
    if request.param == "absent":
        yield f"http://127.0.0.1:{_closed_port()}"
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)  # the kernel completes handshakes; nobody ever reads or writes
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


def test_dead_collector_never_fails_a_request_and_is_reported_once(dead_collector, caplog):
    obs = TracingObserver(
        "a",
        "default",
        dead_collector,
        export_timeout_s=0.5,
        schedule_delay_ms=50,
        environ={},
        sampling=100.0,
    )
    try:
        with caplog.at_level(logging.INFO, logger="sidecar_tls.telemetry.tracing"):
            n = 2000
            began = time.perf_counter()
            for _ in range(n):
                span = obs.start(INBOUND, {})
                assert "traceparent" in dict(span.inject())
                span.finish(200, 10)
            per_hop_us = (time.perf_counter() - began) / n * 1e6
            print(
                f"tracing with {dead_collector.split(':')[-1]} collector: {per_hop_us:.1f} us/hop"
            )
            # Let several export attempts fail.
            for _ in range(3):
                obs.force_flush(timeout_s=2)
        assert obs.export_failures >= 1
        warnings = [r for r in caplog.records if "cannot export spans" in r.getMessage()]
        assert len(warnings) == 1
        assert dead_collector.removeprefix("http://") in warnings[0].getMessage()
    finally:
        obs.shutdown()
