"""The OTLP/HTTP span exporter (stdlib http.client) against a local collector stand-in."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from meshward_common.errors import ConfigError
from sidecar_tls.telemetry.otlp_http import OtlpHttpSpanExporter


@dataclass
class Collector:
    port: int
    status: int = 200
    close_after_reply: bool = False
    posts: list[tuple[str, str, bytes]] = field(default_factory=list)
    connections: set[tuple[str, int]] = field(default_factory=set)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def collector() -> Iterator[Collector]:
    state = Collector(0)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a real collector

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.posts.append((self.path, self.headers["Content-Type"], body))
            state.connections.add(self.client_address)
            self.send_response(state.status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            if state.close_after_reply:
                self.close_connection = True

        def log_message(self, *args: object) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def spans(*names: str) -> list[ReadableSpan]:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("test")
    for name in names:
        tracer.start_span(name).end()
    return list(memory.get_finished_spans())


def span_names(body: bytes) -> list[str]:
    request = ExportTraceServiceRequest.FromString(body)
    return [s.name for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]


def test_batches_are_posted_as_otlp_protobuf_to_v1_traces(collector: Collector) -> None:
    exporter = OtlpHttpSpanExporter(collector.endpoint)
    assert exporter.export(spans("a", "b")) is SpanExportResult.SUCCESS
    assert exporter.export(spans("c")) is SpanExportResult.SUCCESS
    exporter.shutdown()
    (path, ctype, body), (_, _, body2) = collector.posts
    assert (path, ctype) == ("/v1/traces", "application/x-protobuf")
    assert span_names(body) == ["a", "b"]
    assert span_names(body2) == ["c"]
    assert len(collector.connections) == 1  # one kept-alive connection for both batches


def test_a_closed_keepalive_connection_is_retried_once_on_a_fresh_one(collector: Collector) -> None:
    collector.close_after_reply = True
    exporter = OtlpHttpSpanExporter(collector.endpoint + "/")
    for _ in range(3):
        assert exporter.export(spans("x")) is SpanExportResult.SUCCESS
    assert [p[0] for p in collector.posts] == ["/v1/traces"] * 3


def test_error_status_and_dead_collector_are_failures_not_exceptions(
    collector: Collector,
) -> None:
    collector.status = 503
    exporter = OtlpHttpSpanExporter(collector.endpoint)
    assert exporter.export(spans("x")) is SpanExportResult.FAILURE
    assert exporter.last_error == "HTTP 503"
    dead = OtlpHttpSpanExporter("http://127.0.0.1:1", timeout_s=0.5)
    assert dead.export(spans("x")) is SpanExportResult.FAILURE
    assert "ConnectionRefusedError" in dead.last_error
    dead.shutdown()
    assert dead.export(spans("x")) is SpanExportResult.FAILURE  # after shutdown: nothing sent


def test_endpoint_must_be_http_or_https() -> None:
    with pytest.raises(ConfigError, match="OTLP endpoint 'grpc://x:4317'"):
        OtlpHttpSpanExporter("grpc://x:4317")
