"""`meshward traces`: the waterfall drawn from Jaeger's JSON, the query calls it makes (against a
loopback stand-in for Jaeger's query API), and its errors."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from click.testing import CliRunner

from meshward.traces import JaegerQuery, latest, render_trace, span_rows, traces, tree_order
from meshward_common.errors import ConfigError

TD = "spiffe://cluster.local/ns/default/sa/"
TAG_NAMES = {"http_status_code": "http.status_code", "peer_principal": "peer.principal"}


def span(
    sid: str, parent: str | None, pid: str, op: str, kind: str, start: int, dur: int, **tags: str
):
    return {
        "traceID": "t1",
        "spanID": sid,
        "operationName": op,
        "references": [{"refType": "CHILD_OF", "traceID": "t1", "spanID": parent}]
        if parent
        else [],
        "startTime": start,
        "duration": dur,
        "processID": pid,
        "tags": [{"key": "span.kind", "type": "string", "value": kind}]
        + [{"key": TAG_NAMES.get(k, k), "type": "string", "value": v} for k, v in tags.items()],
    }


def make_trace(trace_id: str = "t1", t0: int = 1_700_000_000_000_000) -> dict[str, Any]:
    return {
        "traceID": trace_id,
        "processes": {"p1": {"serviceName": "a.default"}, "p2": {"serviceName": "b.default"}},
        "spans": [  # deliberately out of order: the tree is rebuilt from references
            span("s3", "s2", "p2", "b.default.svc.cluster.local:9080/*", "server", t0 + 2000, 6000,
                 http_status_code="403", peer_principal=TD + "a"),
            span("s1", None, "p1", "a.default.svc.cluster.local:9080/*", "server", t0, 10000,
                 http_status_code="200"),
            span("s2", "s1", "p1", "b.default.svc.cluster.local:9080/*", "client", t0 + 1000, 8000,
                 http_status_code="503", peer_principal=TD + "b", error="true"),
        ],
    }  # fmt: skip


def test_rows_take_service_kind_status_peer_and_parent():
    rows = {r.span_id: r for r in span_rows(make_trace())}
    assert rows["s2"].parent_id == "s1"
    assert rows["s1"].parent_id == ""
    assert rows["s3"].service == "b.default"
    assert rows["s2"].kind == "client"
    assert rows["s2"].status == "503"
    assert rows["s2"].error
    assert rows["s3"].peer == TD + "a"
    assert not rows["s3"].error


def test_a_grpc_span_shows_its_method_and_grpc_status():
    trace = make_trace()
    trace["spans"].append(
        span("s4", "s3", "p2", "ratings.default.svc.cluster.local:9090/*", "client", 1, 2,
             http_status_code="200", **{"grpc.path": "/meshward.demo.Ratings/GetRating",
                                        "grpc.status_code": "7"})
    )  # fmt: skip
    rows = {r.span_id: r for r in span_rows(trace)}
    assert rows["s4"].operation == (
        "ratings.default.svc.cluster.local:9090/* /meshward.demo.Ratings/GetRating"
    )
    assert rows["s4"].status == "200 grpc-status=7"
    assert rows["s3"].operation == "b.default.svc.cluster.local:9080/*"  # HTTP: unchanged
    assert any("grpc-status=7" in line for line in render_trace(trace))


def test_tree_order_is_depth_first_from_the_root():
    assert [(d, r.span_id) for d, r in tree_order(span_rows(make_trace()))] == [
        (0, "s1"),
        (1, "s2"),
        (2, "s3"),
    ]


def test_orphans_are_shown_as_roots():
    t = make_trace()
    t["spans"] = [s for s in t["spans"] if s["spanID"] != "s1"]
    assert [(d, r.span_id) for d, r in tree_order(span_rows(t))] == [(0, "s2"), (1, "s3")]


def test_waterfall_lines():
    lines = render_trace(make_trace(), bar_width=10)
    assert lines[0].startswith("trace t1  a.default a.default.svc.cluster.local:9080/*  10.00 ms")
    assert "3 spans, 2 services" in lines[0]
    assert "2023-11-14 22:13:20 UTC" in lines[0]
    header, root, client, server = lines[1:]
    assert header.split() == [
        "service",
        "kind",
        "operation",
        "duration",
        "status",
        "timeline",
        "peer",
    ]
    assert root.split()[:6] == [
        "a.default",
        "server",
        "a.default.svc.cluster.local:9080/*",
        "10.00",
        "ms",
        "200",
    ]
    assert "|##########|" in root  # the root spans the whole trace
    assert client.startswith("    a.default")
    assert client.rstrip().endswith(TD + "b")
    assert " 503! " in client  # errors are flagged
    assert "| ######## |" in client  # starts 1 ms in, lasts 8 ms of 10
    assert server.startswith("      b.default")
    assert " 403 " in server
    assert server.rstrip().endswith(TD + "a")


def test_latest_dedups_and_orders_newest_first():
    old, new = make_trace("old", t0=1_000), make_trace("new", t0=9_000)
    got = latest([old, new, new, {"traceID": "empty", "spans": []}], limit=5)
    assert [t["traceID"] for t in got] == ["new", "old"]
    assert [t["traceID"] for t in latest([old, new], limit=1)] == ["new"]


class FakeQuery(BaseHTTPRequestHandler):
    """Answers /api/services and /api/traces like Jaeger's query API; records the queries."""

    seen: list[dict[str, list[str]]] = []
    by_service = {
        "a.default": [make_trace("ta", t0=5_000)],
        "b.default": [make_trace("tb", t0=7_000)],
    }

    def do_GET(self) -> None:
        url = urlparse(self.path)
        if url.path == "/api/services":
            body: Any = {"data": ["jaeger", *self.by_service]}
        elif url.path == "/api/traces":
            q = parse_qs(url.query)
            type(self).seen.append(q)
            body = {"data": self.by_service.get(q["service"][0], [])}
        else:
            self.send_error(404)
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def fake_jaeger() -> Iterator[str]:
    FakeQuery.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeQuery)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_one_service_is_queried_with_limit_and_lookback(fake_jaeger):
    result = CliRunner().invoke(
        traces,
        ["--service", "b.default", "-n", "3", "--lookback", "15m", "--query-url", fake_jaeger],
    )
    assert result.exit_code == 0, result.output
    assert FakeQuery.seen == [{"service": ["b.default"], "limit": ["3"], "lookback": ["15m"]}]
    assert result.output.startswith("trace tb ")


def test_without_service_every_mesh_service_is_queried_newest_first(fake_jaeger, monkeypatch):
    monkeypatch.setenv("MESHWARD_JAEGER_QUERY", fake_jaeger)
    result = CliRunner().invoke(traces, [])
    assert result.exit_code == 0, result.output
    assert sorted(q["service"][0] for q in FakeQuery.seen) == [
        "a.default",
        "b.default",
    ]  # not jaeger
    heads = [line for line in result.output.splitlines() if line.startswith("trace ")]
    assert [h.split()[1] for h in heads] == ["tb", "ta"]


def test_no_traces_says_so(fake_jaeger):
    result = CliRunner().invoke(traces, ["-s", "nobody.default", "--query-url", fake_jaeger])
    assert result.exit_code == 0
    assert "no traces for service 'nobody.default' in the last 1h" in result.output


def test_unreachable_jaeger_is_one_clear_error():
    result = CliRunner().invoke(traces, ["--query-url", "http://127.0.0.1:9"])
    assert result.exit_code == 1
    assert "cannot reach Jaeger's query API at http://127.0.0.1:9" in result.output
    assert "Traceback" not in result.output


def test_bad_query_url_is_a_config_error():
    with pytest.raises(ConfigError, match="must look like"):
        JaegerQuery("localhost:16686")
    result = CliRunner().invoke(traces, ["--query-url", "ftp://x"])
    assert result.exit_code == 1
    assert "must look like http://host:16686" in result.output
