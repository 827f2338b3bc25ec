"""Istio's tracing sampling: a percentage for new traces, parent-based, forced by
x-client-trace-id; unsampled requests still carry their context onward (flags 00)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from meshward_common.errors import ConfigError
from sidecar_tls.http1.head import parse_request_head
from sidecar_tls.telemetry.observe import Hop
from sidecar_tls.telemetry.sampling import (
    Decision,
    decide,
    fresh_ids,
    parse_traceparent,
    unsampled_headers,
)
from sidecar_tls.telemetry.tracing import TracingObserver
from tests.sidecar_tls.loopback import CLIENT_ID, SERVER_ID, http_get, sidecar_pair
from tests.sidecar_tls.testca import MiniCA

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
SAMPLED = {"traceparent": f"00-{TRACE}-{PARENT}-01"}
NOT_SAMPLED = {"traceparent": f"00-{TRACE}-{PARENT}-00"}


def _decide(headers: dict[str, str], percent: float, draw: float) -> Decision:
    return decide(headers.get, percent, draw)


@pytest.mark.parametrize(
    ("percent", "draw", "sampled"),
    [(1.0, 0.005, True), (1.0, 0.01, False), (1.0, 0.5, False), (0.0, 0.0, False),
     (100.0, 0.9999, True), (50.0, 0.49, True), (50.0, 0.51, False)],
)  # fmt: skip
def test_new_traces_are_sampled_at_the_percentage(percent, draw, sampled) -> None:
    assert _decide({}, percent, draw) == Decision(sampled, None)


@pytest.mark.parametrize(
    ("headers", "sampled"),
    [
        (SAMPLED, True),
        (NOT_SAMPLED, False),
        ({"x-b3-traceid": TRACE, "x-b3-spanid": PARENT, "x-b3-sampled": "1"}, True),
        ({"x-b3-traceid": TRACE, "x-b3-spanid": PARENT, "x-b3-sampled": "0"}, False),
        ({"x-b3-traceid": TRACE, "x-b3-spanid": PARENT, "x-b3-flags": "1"}, True),
        ({"b3": f"{TRACE}-{PARENT}-1"}, True),
        ({"b3": f"{TRACE}-{PARENT}-d"}, True),
        ({"b3": f"{TRACE}-{PARENT}-0"}, False),
    ],
)
def test_the_callers_decision_wins_over_the_percentage(headers, sampled) -> None:
    # A draw that the percentage alone would decide the other way.
    decision = _decide(headers, 0.0 if sampled else 100.0, 0.5)
    assert decision == Decision(sampled, TRACE, inherited=True)


def test_a_bare_b3_sampling_state_decides_without_a_trace_id() -> None:
    assert _decide({"b3": "0"}, 100.0, 0.0) == Decision(False, None)
    assert _decide({"b3": "1"}, 0.0, 0.5) == Decision(True, None)


def test_a_caller_that_defers_leaves_the_decision_to_the_percentage_and_keeps_its_trace() -> None:
    deferred = {"b3": f"{TRACE}-{PARENT}"}
    assert _decide(deferred, 1.0, 0.001) == Decision(True, TRACE)
    assert _decide(deferred, 1.0, 0.5) == Decision(False, TRACE)
    short = {"x-b3-traceid": "a3ce929d0e0e4736", "x-b3-spanid": PARENT}
    assert _decide(short, 0.0, 0.5) == Decision(False, "0" * 16 + "a3ce929d0e0e4736")
    # A bare sampling state has no trace to continue: this hop still writes a context onward.
    assert _decide({"b3": "0"}, 0.0, 0.5).inherited is False


@pytest.mark.parametrize("force", ["x-client-trace-id", "x-envoy-force-trace"])
def test_forcing_headers_sample_even_against_an_unsampled_parent(force) -> None:
    assert _decide({force: "abc"}, 0.0, 0.99) == Decision(True, None, forced=True)
    assert _decide({**NOT_SAMPLED, force: "1"}, 0.0, 0.99) == Decision(True, TRACE, forced=True)


@pytest.mark.parametrize(
    "value",
    ["garbage", f"00-{'0' * 32}-{PARENT}-01", f"00-{TRACE}-{'0' * 16}-01",
     f"ff-{TRACE}-{PARENT}-01", f"00-{TRACE}-{PARENT}-01-extra", f"00-{TRACE.upper()}-{PARENT}-01",
     f"00-{TRACE}-{PARENT}-0g", f"0g-{TRACE}-{PARENT}-01", f"00-{TRACE}-{PARENT}-1",
     f"00-{TRACE}+{PARENT}-01", f"01-{TRACE}-{PARENT}-01x", f"00-{TRACE[:-1]}-{PARENT}-01",
     f"00-{TRACE} -{PARENT}-01", ""],
)  # fmt: skip
def test_invalid_traceparent_is_no_parent(value) -> None:
    assert parse_traceparent(value) is None
    assert _decide({"traceparent": value}, 0.0, 0.5) == Decision(False, None)


@pytest.mark.parametrize(
    ("value", "sampled"),
    [(f"00-{TRACE}-{PARENT}-01", True), (f"00-{TRACE}-{PARENT}-00", False),
     (f" 00-{TRACE}-{PARENT}-03 ", True), (f"01-{TRACE}-{PARENT}-00-future-fields", False),
     (f"01-{TRACE}-{PARENT}-01", True)],
)  # fmt: skip
def test_valid_traceparents(value: str, sampled: bool) -> None:
    assert parse_traceparent(value) == (TRACE, PARENT, sampled)


def test_unsampled_headers_continue_the_trace_with_flags_00() -> None:
    out = dict(unsampled_headers(TRACE, "1111111111111111", b3_single=True))
    assert out == {
        "traceparent": f"00-{TRACE}-1111111111111111-00",
        "x-b3-traceid": TRACE,
        "x-b3-spanid": "1111111111111111",
        "x-b3-sampled": "0",
        "b3": f"{TRACE}-1111111111111111-0",
    }
    fresh = dict(unsampled_headers(None, "2222222222222222", b3_single=False))
    parsed = parse_traceparent(fresh["traceparent"])
    assert parsed is not None
    assert parsed[2] is False
    assert parsed[0] == fresh["x-b3-traceid"] != TRACE
    assert "b3" not in fresh


HOP = Hop(
    direction="inbound",
    protocol="http",
    method="GET",
    path="/",
    authority="b:9080",
    destination_service="b.default.svc.cluster.local",
    upstream_address="10.0.0.2:9080",
)


@pytest.fixture
def exported() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def _observer(exported: InMemorySpanExporter, sampling: float) -> TracingObserver:
    return TracingObserver("b", "default", exporter=exported, environ={}, sampling=sampling)


@pytest.fixture
def never(exported: InMemorySpanExporter) -> Iterator[TracingObserver]:
    obs = _observer(exported, 0.0)
    yield obs
    obs.shutdown()


def test_unsampled_parent_context_is_forwarded_as_it_came(never, exported) -> None:
    span = never.start(HOP, {**NOT_SAMPLED, "x-request-id": "r-1"})
    assert list(span.inject()) == []  # the caller's headers go on unchanged
    span.finish(200, 1)
    assert never.force_flush()
    assert exported.get_finished_spans() == ()


def test_unsampled_request_makes_no_span_but_gets_context_and_request_id(never, exported) -> None:
    span = never.start(HOP, {})
    injected = dict(span.inject())
    span.finish(200, 1)
    assert never.force_flush()
    assert exported.get_finished_spans() == ()
    assert injected["traceparent"].endswith("-00")
    assert injected["x-b3-sampled"] == "0"
    assert len(injected["x-request-id"]) == 36
    assert injected["x-request-id"][14] == "4"  # a version-4 UUID


def test_sampled_parent_is_traced_even_at_zero_percent(never, exported) -> None:
    never.start(HOP, SAMPLED).finish(200, 1)
    assert never.force_flush()
    (span,) = exported.get_finished_spans()
    assert f"{span.context.trace_id:032x}" == TRACE


def test_forced_trace_continues_an_unsampled_parent(never, exported) -> None:
    hop_span = never.start(HOP, {**NOT_SAMPLED, "x-client-trace-id": "debug-1"})
    injected = dict(hop_span.inject())
    hop_span.finish(200, 1)
    assert never.force_flush()
    (span,) = exported.get_finished_spans()
    assert f"{span.context.trace_id:032x}" == TRACE
    assert span.parent is not None
    assert f"{span.parent.span_id:016x}" == PARENT
    assert injected["traceparent"].endswith("-01")


def test_parsed_requests_without_context_take_the_same_decision(exported) -> None:
    """The data path hands observers a lazy view of the parsed head (a shortcut for requests
    without context); the outcome is the one `decide` gives."""
    head = parse_request_head(b"GET / HTTP/1.1\r\nHost: b\r\nUser-Agent: t\r\n\r\n")
    never, always = _observer(exported, 0.0), _observer(exported, 100.0)
    try:
        span = never.start(HOP, head.lower_map())
        injected = dict(span.inject())
        span.finish(200, 1)
        parsed = parse_traceparent(injected["traceparent"])
        assert parsed is not None
        assert parsed[2] is False
        assert injected["x-b3-traceid"] == parsed[0]
        assert injected["x-b3-spanid"] == parsed[1]
        assert injected["x-b3-sampled"] == "0"
        assert injected["x-request-id"][14] == "4"
        assert "b3" not in injected
        assert never.force_flush()
        assert exported.get_finished_spans() == ()
        always.start(HOP, head.lower_map()).finish(200, 1)
        assert always.force_flush()
        (sampled,) = exported.get_finished_spans()
        assert dict(sampled.attributes or {})["user_agent"] == "t"
        with_id = parse_request_head(b"GET / HTTP/1.1\r\nX-Request-Id: r-9\r\n\r\n")
        assert "x-request-id" not in dict(never.start(HOP, with_id.lower_map()).inject())
        with_parent = parse_request_head(
            b"GET / HTTP/1.1\r\nTraceparent: " + SAMPLED["traceparent"].encode() + b"\r\n\r\n"
        )
        never.start(HOP, with_parent.lower_map()).finish(200, 1)  # the parent wins over 0 %
        assert never.force_flush()
        assert len(exported.get_finished_spans()) == 2
    finally:
        never.shutdown()
        always.shutdown()


@pytest.mark.parametrize(
    "extra",
    [
        b"",
        b"X-Request-Id: r-1\r\n",
        b"X-B3-Sampled: 1\r\n",  # the W3C context wins over B3
        b"b3: 1\r\n",
        b"x-client-trace-id: debug-1\r\n",  # forced: sampled whatever the parent says
        b"x-envoy-force-trace: 1\r\n",
    ],
)
def test_parsed_requests_with_an_unsampled_parent_take_the_same_decision(
    exported, extra: bytes
) -> None:
    """The shortcut for a caller whose traceparent says "not sampled" concludes what `decide`
    does on the same headers given as a plain mapping."""
    raw = b"GET / HTTP/1.1\r\nHost: b\r\ntraceparent: " + NOT_SAMPLED["traceparent"].encode()
    head = parse_request_head(raw + b"\r\n" + extra + b"\r\n")
    never = _observer(exported, 0.0)
    try:
        results = []
        for headers in (head.lower_map(), dict(head.all_lower())):
            span = never.start(HOP, headers)
            injected = dict(span.inject())
            span.finish(200, 1)
            assert never.force_flush()
            rid = injected.pop("x-request-id", None)
            # a sampled hop's own span id is new each time: keep the trace id, drop the span id
            context = {k: v.split("-")[1] if k == "traceparent" else v for k, v in injected.items()}
            forced = b"force" in extra or b"client-trace" in extra
            if forced:
                context.pop("x-b3-spanid", None)
                context.pop("x-b3-parentspanid", None)
            results.append((context, rid is None, len(exported.get_finished_spans())))
            exported.clear()
        assert results[0] == results[1]
        injected, kept_request_id, spans = results[0]
        assert spans == (1 if forced else 0)
        assert kept_request_id == (b"Request-Id" in extra)
        if forced:
            assert injected["traceparent"] == TRACE  # the caller's trace, continued
        else:
            assert injected == {}  # the caller's context goes on as it came
    finally:
        never.shutdown()


def test_fresh_ids_are_valid_and_distinct() -> None:
    ids = {fresh_ids() for _ in range(200)}
    assert len(ids) == 200
    for trace_id, span_id, rid in ids:
        assert len(trace_id) == 32
        assert len(span_id) == 16
        assert len(rid) == 32
        assert trace_id.strip("0")
        assert span_id.strip("0")


def test_sampling_must_be_a_percentage(exported) -> None:
    with pytest.raises(ConfigError, match="trace sampling 150"):
        _observer(exported, 150.0)


async def test_the_outbound_decision_reaches_the_app_through_both_sidecars(exported) -> None:
    ca = MiniCA.create()
    observer = _observer(exported, 0.0)
    try:
        async with sidecar_pair(ca.issue(CLIENT_ID), ca.issue(SERVER_ID), observer=observer) as p:
            status, body = await http_get(p.outbound_port, "/")
            forced_status, forced_body = await http_get(
                p.outbound_port, "/", {"x-client-trace-id": "t-1"}
            )
        assert observer.force_flush()
    finally:
        observer.shutdown()
    assert (status, forced_status) == (200, 200)
    plain = json.loads(body)["headers"]
    assert plain["traceparent"][0].endswith("-00")  # one value: the outbound one was replaced
    assert len(plain["traceparent"]) == 1
    assert len(plain["x-request-id"]) == 1
    forced = json.loads(forced_body)["headers"]
    assert int(forced["traceparent"][0][-2:], 16) & 1 == 1  # sampled
    # Forced at the outbound sidecar; the inbound one follows its sampled parent: two spans.
    assert len(exported.get_finished_spans()) == 2


@pytest.mark.parametrize("command", ["run", "ingress"])
def test_cli_takes_a_sampling_percentage_and_refuses_others(command) -> None:
    from click.testing import CliRunner

    from sidecar_tls.cli import sidecar

    runner = CliRunner()
    help_text = runner.invoke(sidecar, [command, "--help"]).output
    assert "--trace-sampling" in help_text
    assert "default: 1.0" in help_text
    bad = runner.invoke(sidecar, [command, "--trace-sampling", "150", "--agent-socket", "/x"])
    assert bad.exit_code == 2
    assert "--trace-sampling" in bad.output
