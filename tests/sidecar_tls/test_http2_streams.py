"""HTTP/2 through two sidecars on loopback, frame by frame: a plain HTTP/2 client (curl), a
malformed stream beside good ones, GOAWAY from the app, a peer without a certificate, rotation
with streams open, and telemetry per RPC."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import subprocess

import grpc
import h2.errors
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families

from sidecar_tls.destinations import Destination, resolve_destination
from sidecar_tls.telemetry.metrics import MetricsObserver
from sidecar_tls.telemetry.observe import CompositeObserver
from sidecar_tls.telemetry.tracing import TracingObserver
from tests.sidecar_tls import grpc_apps
from tests.sidecar_tls.h2_apps import RawH2Client, h2_echo_app
from tests.sidecar_tls.loopback import CLIENT_ID, SERVER_ID, Pair, sidecar_pair
from tests.sidecar_tls.testca import MiniCA


async def _curl(*args: str) -> tuple[int, bytes]:
    proc = await asyncio.create_subprocess_exec(
        "curl", "-s", "--http2-prior-knowledge", "-o", "-", "-w", "\n%{http_code}", *args,
        stdout=subprocess.PIPE,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    body, _, code = out.rpartition(b"\n")
    return int(code), body


async def test_a_plain_http2_client_goes_through_with_xfcc_and_is_denied_by_path() -> None:
    ca = MiniCA.create()
    async with sidecar_pair(
        ca.issue(CLIENT_ID), ca.issue(SERVER_ID), h2_echo_app, deny_paths=("/private",)
    ) as pair:
        url = f"http://127.0.0.1:{pair.outbound_port}"
        status, body = await _curl(f"{url}/reviews/1", "-H", "x-forwarded-client-cert: forged")
        denied, denial = await _curl(f"{url}/private")
    assert status == 200
    seen = json.loads(body)
    assert (seen["method"], seen["path"]) == ("GET", "/reviews/1")
    assert seen["headers"]["x-forwarded-client-cert"].endswith(f";URI={CLIENT_ID}")
    assert seen["headers"]["x-forwarded-client-cert"].startswith(f"By={SERVER_ID};")
    assert (denied, denial) == (403, b"RBAC: access denied")


async def test_a_malformed_stream_is_reset_and_the_others_on_its_connection_go_on() -> None:
    ca = MiniCA.create()
    async with sidecar_pair(ca.issue(CLIENT_ID), ca.issue(SERVER_ID), h2_echo_app) as pair:
        client = await RawH2Client.connect(pair.outbound_port)
        try:
            first = client.request("/one")
            bad = client.request("/two", [("connection", "keep-alive")])  # forbidden in HTTP/2
            upper = client.request("/three", [("X-Upper", "1")])  # names must be lowercase
            last = client.request("/four")
            outcomes = await client.settle()
        finally:
            client.close()
    assert outcomes[bad].reset == h2.errors.ErrorCodes.PROTOCOL_ERROR
    assert outcomes[upper].reset == h2.errors.ErrorCodes.PROTOCOL_ERROR
    for sid, path in ((first, "/one"), (last, "/four")):
        assert outcomes[sid].status == 200, outcomes[sid]
        assert json.loads(outcomes[sid].body)["path"] == path
    assert client.goaway is None  # the connection itself was never in question


async def test_goaway_from_the_app_refuses_only_the_streams_it_did_not_take() -> None:
    async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await h2_echo_app(reader, writer, goaway_after=1)

    ca = MiniCA.create()
    async with sidecar_pair(ca.issue(CLIENT_ID), ca.issue(SERVER_ID), app) as pair:
        client = await RawH2Client.connect(pair.outbound_port)
        try:
            served = client.request("/first")
            await client.settle()
            refused = client.request("/second")  # the app goes away instead of taking it
            await client.settle()
            after = client.request("/third")  # a fresh app connection takes this one
            outcomes = await client.settle()
        finally:
            client.close()
    assert outcomes[served].status == 200
    assert outcomes[refused].reset == h2.errors.ErrorCodes.REFUSED_STREAM
    assert outcomes[after].status == 200
    assert client.goaway is None  # the app's GOAWAY was for its own connection only


async def test_a_stopping_sidecar_says_goaway_with_the_last_stream_it_took() -> None:
    ca = MiniCA.create()
    async with sidecar_pair(ca.issue(CLIENT_ID), ca.issue(SERVER_ID), h2_echo_app) as pair:
        client = await RawH2Client.connect(pair.outbound_port)
        served = client.request("/first")
        outcomes = await client.settle()
    # The pair's listeners are stopped as the sidecar stops them (their tasks cancelled).
    try:
        await client.until_closed()
    finally:
        client.close()
    assert outcomes[served].status == 200
    assert client.goaway is not None, "the connection was dropped without GOAWAY"
    assert client.goaway.error_code == h2.errors.ErrorCodes.NO_ERROR
    assert client.goaway.last_stream_id == served  # nothing after it was taken: safe to retry


async def test_the_pooled_connection_between_sidecars_sends_without_nagle() -> None:
    ca = MiniCA.create()
    async with sidecar_pair(ca.issue(CLIENT_ID), ca.issue(SERVER_ID), h2_echo_app) as pair:
        client = await RawH2Client.connect(pair.outbound_port)
        try:
            client.request("/one")
            await client.settle()
        finally:
            client.close()
        dest = resolve_destination(pair.client_state.snapshot, "127.0.0.1", pair.inbound_port)
        sides = pair.outbound.pool.h2_upstreams(dest).sides
        assert len(sides) == 1
        assert sides[0].transport is not None
        sock = sides[0].transport.get_extra_info("socket")
        # Set by the event loop for the connections it makes (proxy.net): small frames go at once.
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


async def test_a_peer_offering_h2_without_a_client_certificate_is_refused_by_strict() -> None:
    ca = MiniCA.create()
    async with sidecar_pair(ca.issue(CLIENT_ID), ca.issue(SERVER_ID), h2_echo_app) as pair:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["h2"])
        refused_before = pair.inbound.refused
        try:
            # TLS 1.3 reports the missing certificate after the client's handshake is done
            reader, writer = await asyncio.open_connection("127.0.0.1", pair.inbound_port, ssl=ctx)
            client = RawH2Client(reader, writer)
            client.request("/")
            answered = any(o.status or o.ended for o in (await client.settle()).values())
        except (ssl.SSLError, ConnectionError):
            answered = False
        assert not answered
        for _ in range(200):
            if pair.inbound.refused > refused_before:
                break
            await asyncio.sleep(0.05)
        assert pair.inbound.refused == refused_before + 1


async def test_rotation_with_streams_open_fails_no_call(grpc_app: int) -> None:
    ca = MiniCA.create()
    async with sidecar_pair(ca.issue(CLIENT_ID), ca.issue(SERVER_ID), app_port=grpc_app) as pair:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{pair.outbound_port}")
        async with channel:
            bidi = channel.stream_stream(grpc_apps.path("Bidi"))()
            await bidi.write(b"before")
            assert await bidi.read() == b"before"
            unary = channel.unary_unary(grpc_apps.path("Unary"))
            upstreams = pair.outbound.pool.h2_upstreams(_dest(pair))
            (old,) = upstreams.sides
            results = []
            for i in range(30):
                if i == 10:
                    pair.client_svids.set(ca.issue(CLIENT_ID))  # the client sidecar rotates
                if i == 20:
                    pair.server_svids.set(ca.issue(SERVER_ID))  # and then the server's
                results.append(json.loads(await unary(b"x", timeout=10))["size"])
            await bidi.write(b"after")  # the stream opened before still runs, on the old one
            assert await bidi.read() == b"after"
            await bidi.done_writing()
            assert await bidi.code() is grpc.StatusCode.OK
            for _ in range(200):  # the old connection closes after its last stream
                if old.closed:
                    break
                await asyncio.sleep(0.05)
            assert old.closed
        assert results == [1] * 30
        assert pair.outbound.pool.handshakes == 2  # one connection per generation
        assert old not in upstreams.sides


def _dest(pair: Pair) -> Destination:
    return resolve_destination(pair.client_state.snapshot, "127.0.0.1", pair.inbound_port)


async def test_each_rpc_gets_a_span_per_hop_and_istio_request_metrics(grpc_app: int) -> None:
    exported = InMemorySpanExporter()
    tracing = TracingObserver("svc", "default", exporter=exported, sampling=100.0)
    metrics = MetricsObserver()
    observer = CompositeObserver([tracing, metrics])
    ca = MiniCA.create()
    try:
        async with (
            sidecar_pair(
                ca.issue(CLIENT_ID),
                ca.issue(SERVER_ID),
                app_port=grpc_app,
                observer=observer,
                deny_paths=(grpc_apps.path("Echo"),),
            ) as pair,
            grpc.aio.insecure_channel(f"127.0.0.1:{pair.outbound_port}") as ch,
        ):
            await ch.unary_unary(grpc_apps.path("Unary"))(b"ok", timeout=10)
            with pytest.raises(grpc.aio.AioRpcError):
                await ch.unary_unary(grpc_apps.path("Fail"))(b"NOT_FOUND:gone", timeout=10)
            with pytest.raises(grpc.aio.AioRpcError):
                await ch.unary_unary(grpc_apps.path("Echo"))(b"no", timeout=10)
        assert tracing.force_flush()
    finally:
        tracing.shutdown()
    samples = [
        s
        for f in text_string_to_metric_families(metrics.render().decode())
        for s in f.samples
        if s.name == "istio_requests_total"
    ]
    seen = {
        (s.labels["reporter"], s.labels["grpc_response_status"], s.labels["response_code"])
        for s in samples
        if s.labels["request_protocol"] == "grpc"
    }
    assert seen == {
        ("source", "0", "200"),
        ("destination", "0", "200"),
        ("source", "5", "200"),
        ("destination", "5", "200"),
        ("source", "7", "200"),  # the destination's denial, as the caller saw it
        ("destination", "7", "200"),
    }
    spans = exported.get_finished_spans()
    by_path = {}
    for span in spans:
        by_path.setdefault(span.attributes["grpc.path"], []).append(span)
    unary = by_path[grpc_apps.path("Unary")]
    assert sorted(s.kind.name for s in unary) == ["CLIENT", "SERVER"]
    client = next(s for s in unary if s.kind is SpanKind.CLIENT)
    server = next(s for s in unary if s.kind is SpanKind.SERVER)
    assert server.context.trace_id == client.context.trace_id
    assert server.parent is not None
    assert server.parent.span_id == client.context.span_id
    assert server.attributes["http.protocol"] == "HTTP/2"
    assert server.attributes["grpc.status_code"] == "0"
    failed = by_path[grpc_apps.path("Fail")]
    assert {s.attributes["grpc.status_code"] for s in failed} == {"5"}
    assert all(s.attributes["error"] == "true" for s in failed)
