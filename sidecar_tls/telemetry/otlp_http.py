"""OTLP/HTTP span export (protobuf over HTTP/1.1 to `<endpoint>/v1/traces`) with the stdlib.

The grpc OTLP exporter costs ~20 MB RSS per sidecar and opentelemetry-exporter-otlp-proto-http
pulls `requests`; the protocol is one POST per batch, so the message is encoded by
opentelemetry-exporter-otlp-proto-common's `encode_spans` (what both of those exporters use) and
posted with `http.client` on the BatchSpanProcessor's worker thread (blocking there is what that
thread is for).
"""

from __future__ import annotations

import http.client
import logging
import threading
from collections.abc import Sequence
from urllib.parse import urlparse

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from meshward_common.errors import ConfigError

log = logging.getLogger(__name__)

TRACES_PATH = "/v1/traces"  # the OTLP/HTTP signal path appended to OTEL_EXPORTER_OTLP_ENDPOINT
CONTENT_TYPE = "application/x-protobuf"


def encode_export_request(spans: Sequence[ReadableSpan]) -> bytes:
    """An `ExportTraceServiceRequest`: spans grouped by resource, then by instrumentation scope."""
    return bytes(encode_spans(spans).SerializeToString())


class OtlpHttpSpanExporter(SpanExporter):
    """Posts each batch to `endpoint` + /v1/traces over one kept-alive connection; any failure
    (connect, timeout, non-2xx) is a FAILURE result, never an exception (the caller reports it)."""

    def __init__(self, endpoint: str, timeout_s: float = 2.0) -> None:
        parsed = urlparse(endpoint)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ConfigError(f"OTLP endpoint {endpoint!r} must look like http://host:port")
        self._https = parsed.scheme == "https"
        self._host = parsed.hostname
        self._port = parsed.port or (443 if self._https else 80)
        self._path = parsed.path.rstrip("/") + TRACES_PATH
        self._timeout = timeout_s
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()  # export and shutdown may come from different threads
        self._shut = False
        self.last_error = ""

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = cls(self._host, self._port, timeout=self._timeout)
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        body = encode_export_request(spans)
        with self._lock:
            if self._shut:
                return SpanExportResult.FAILURE
            # A kept-alive connection the collector closed shows up as an error on reuse: one
            # retry on a fresh connection tells that apart from a dead collector.
            for _attempt in (1, 2):
                reused = self._conn is not None
                try:
                    status = self._post(body)
                except (OSError, http.client.HTTPException) as exc:
                    self._drop_connection()
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    if not reused:
                        return SpanExportResult.FAILURE
                    continue
                if 200 <= status < 300:
                    self.last_error = ""
                    return SpanExportResult.SUCCESS
                self.last_error = f"HTTP {status}"
                return SpanExportResult.FAILURE
        return SpanExportResult.FAILURE  # pragma: no cover - the loop always returns

    def _post(self, body: bytes) -> int:
        conn = self._connection()
        conn.request(
            "POST",
            self._path,
            body=body,
            headers={"Content-Type": CONTENT_TYPE, "Content-Length": str(len(body))},
        )
        response = conn.getresponse()
        response.read()  # drain so the connection can carry the next batch
        if response.will_close:
            self._drop_connection()
        return response.status

    def shutdown(self) -> None:
        with self._lock:
            self._shut = True
            self._drop_connection()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True  # nothing is buffered here; the BatchSpanProcessor holds the queue
