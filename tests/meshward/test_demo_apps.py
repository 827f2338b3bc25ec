"""The demo apps on loopback, without a mesh: data, received headers, trace propagation, errors,
and the gRPC hop (reviews -> ratings over meshward.demo.Ratings with a real grpcio server)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator

import aiohttp
import grpc
import pytest
from aiohttp import web
from click.testing import CliRunner

from meshward.demo import rpc
from meshward.demo.apps import DemoConfig, make_app
from meshward_common.errors import ConfigError
from meshward_common.protos import meshward_demo_pb2 as pb2
from meshward_common.protos import meshward_demo_pb2_grpc as pb2_grpc

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
XFCC = "By=spiffe://cluster.local/ns/default/sa/bookinfo-productpage;Hash=ab;URI=spiffe://cluster.local/ns/istio-system/sa/meshward-ingress"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _start(config: DemoConfig) -> web.AppRunner:
    runner = web.AppRunner(make_app(config))
    await runner.setup()
    await web.TCPSite(runner, config.host, config.port).start()
    return runner


@pytest.fixture
async def bookinfo() -> AsyncIterator[dict[str, str]]:
    """The four apps as `make up` wires them: reviews calls ratings over gRPC."""
    ports = {name: _free_port() for name in ("productpage", "details", "reviews", "ratings")}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    grpc_port = _free_port()
    upstreams = {**urls, "ratings": f"grpc://127.0.0.1:{grpc_port}"}
    runners = [
        await _start(
            DemoConfig(
                name,
                "v2" if name == "reviews" else "v1",
                "127.0.0.1",
                port,
                upstreams,
                grpc_port=grpc_port,
            )
        )
        for name, port in ports.items()
    ]
    try:
        yield {**urls, "ratings_grpc": f"127.0.0.1:{grpc_port}"}
    finally:
        for runner in runners:
            await runner.cleanup()


async def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s, s.get(url, headers=headers or {}) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_productpage_shows_every_hop_and_forwards_trace_headers(bookinfo):
    status, body = await _get(
        bookinfo["productpage"] + "/productpage",
        {"traceparent": TRACEPARENT, "x-request-id": "req-1", "x-forwarded-client-cert": XFCC},
    )
    assert status == 200
    assert body["service"] == "productpage"
    assert body["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert (
        body["identity"]["caller"] == "spiffe://cluster.local/ns/istio-system/sa/meshward-ingress"
    )
    details = body["data"]["details"]
    reviews = body["data"]["reviews"]
    assert details["data"]["author"] == "William Shakespeare"
    # The trace headers reached details, reviews and (through reviews) ratings.
    for hop in (details, reviews, reviews["data"]["ratings"]):
        assert hop["received_headers"]["traceparent"] == TRACEPARENT
        assert hop["received_headers"]["x-request-id"] == "req-1"
        assert hop["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
        # The app never forwards the caller's XFCC: only a sidecar may set it.
        assert "x-forwarded-client-cert" not in hop["received_headers"]
    assert reviews["version"] == "v2"
    assert reviews["data"]["reviews"][0]["rating"] == {"stars": 5, "color": "black"}
    assert [(h["service"], h["protocol"], h["status"]) for h in body["hops"]] == [
        ("productpage", "http", "200"),
        ("details", "http", "200"),
        ("reviews", "http", "200"),
        ("ratings", "grpc", "200"),
    ]
    ratings = reviews["data"]["ratings"]
    assert ratings["grpc_status"] == "OK"
    assert ratings["data"] == {"id": 0, "ratings": {"Reviewer1": 5, "Reviewer2": 4}}
    assert ratings["received_headers"]["user-agent"].startswith("grpc-python")


async def test_b3_headers_are_forwarded_and_give_the_trace_id(bookinfo):
    headers = {
        "x-b3-traceid": "463ac35c9f6413ad",
        "x-b3-spanid": "a2fb4a1d1a96d312",
        "x-b3-sampled": "1",
    }
    status, body = await _get(bookinfo["reviews"] + "/reviews/3", headers)
    assert status == 200
    assert body["trace_id"] == "463ac35c9f6413ad"
    ratings = body["data"]["ratings"]
    assert ratings["received_headers"]["x-b3-traceid"] == "463ac35c9f6413ad"
    assert ratings["data"]["id"] == 3


async def test_untraced_request_has_empty_trace_id_and_no_caller(bookinfo):
    status, body = await _get(bookinfo["details"] + "/details/1")
    assert status == 200
    assert body["trace_id"] == ""
    assert body["identity"] == {"caller": "", "callee": ""}
    assert body["data"]["id"] == 1


async def test_ratings_sees_the_caller_from_xfcc_metadata_and_the_http_api_stays(bookinfo):
    xfcc = (
        "By=spiffe://cluster.local/ns/default/sa/bookinfo-ratings;Hash=ab;"
        "URI=spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
    )
    async with grpc.aio.insecure_channel(bookinfo["ratings_grpc"]) as channel:
        reply = await pb2_grpc.RatingsStub(channel).GetRating(
            pb2.GetRatingRequest(product_id=7),
            metadata=(("x-forwarded-client-cert", xfcc), ("traceparent", TRACEPARENT)),
            timeout=10,
        )
    assert reply.caller == "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
    assert reply.callee == "spiffe://cluster.local/ns/default/sa/bookinfo-ratings"
    assert reply.trace_id == "0af7651916cd43dd8448eb211c80319c"
    assert (reply.product_id, reply.service, reply.version) == (7, "ratings", "v1")
    assert reply.received_metadata["x-forwarded-client-cert"] == xfcc
    status, body = await _get(bookinfo["ratings"] + "/ratings/7")  # HTTP beside gRPC
    assert status == 200
    assert body["data"] == {"id": 7, "ratings": {"Reviewer1": 5, "Reviewer2": 4}}


async def test_set_rating_checks_its_input_and_changes_what_get_rating_answers(bookinfo):
    async with grpc.aio.insecure_channel(bookinfo["ratings_grpc"]) as channel:
        stub = pb2_grpc.RatingsStub(channel)
        for request, message in (
            (pb2.SetRatingRequest(product_id=1, reviewer="", stars=3), "reviewer: required"),
            (pb2.SetRatingRequest(product_id=1, reviewer="R", stars=9), "stars: 9 is not 1..5"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await stub.SetRating(request, timeout=10)
            assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert failed.value.details() == message
        await stub.SetRating(pb2.SetRatingRequest(product_id=1, reviewer="Reviewer1", stars=2))
        reply = await stub.GetRating(pb2.GetRatingRequest(product_id=1), timeout=10)
    assert dict(reply.ratings) == {"Reviewer1": 2, "Reviewer2": 4}


async def test_the_rpc_command_prints_the_reply_or_one_line_with_the_status(bookinfo):
    runner = CliRunner()
    target = bookinfo["ratings_grpc"]
    done = await asyncio.to_thread(runner.invoke, rpc.main, [target, "GetRating", "3"])
    assert done.exit_code == 0, done.output
    reply = json.loads(done.stdout)
    assert (reply["product_id"], reply["service"], reply["caller"]) == (3, "ratings", "")
    done = await asyncio.to_thread(
        runner.invoke, rpc.main, [target, "SetRating", "3", "--reviewer", ""]
    )
    assert (done.exit_code, done.stdout, done.stderr) == (
        1,
        "",
        "INVALID_ARGUMENT: reviewer: required\n",
    )
    dead = f"127.0.0.1:{_free_port()}"
    done = await asyncio.to_thread(
        runner.invoke, rpc.main, [dead, "GetRating", "3", "--timeout", "5"]
    )
    assert done.exit_code == 1
    assert done.stderr.startswith("UNAVAILABLE: ")
    assert len(done.stderr.splitlines()) == 1


async def test_a_failed_grpc_upstream_is_reported_with_its_status():
    dead = f"grpc://127.0.0.1:{_free_port()}"
    config = DemoConfig("reviews", "v1", "127.0.0.1", _free_port(), {"ratings": dead})
    runner = await _start(config)
    try:
        status, body = await _get(f"http://127.0.0.1:{config.port}/reviews/0")
    finally:
        await runner.cleanup()
    assert status == 200
    ratings = body["data"]["ratings"]
    assert (ratings["status"], ratings["protocol"], ratings["grpc_status"]) == (
        503,
        "grpc",
        "UNAVAILABLE",
    )
    assert body["data"]["reviews"][0]["rating"]["stars"] is None


def test_grpc_upstream_urls_are_checked():
    with pytest.raises(ConfigError, match="only ratings serves gRPC"):
        DemoConfig("productpage", upstreams={"details": "grpc://details:9090"})
    with pytest.raises(ConfigError, match="must start with http:// or grpc://"):
        DemoConfig("reviews", upstreams={"ratings": "ratings:9090"})
    with pytest.raises(ConfigError, match="no host:port after grpc://"):
        DemoConfig("reviews", upstreams={"ratings": "grpc://"})
    assert DemoConfig("reviews").upstream("ratings") == "grpc://ratings:9090"
    assert DemoConfig("productpage").upstream("details") == "http://details:9080"


async def test_failed_upstream_is_reported_not_raised(bookinfo):
    dead = f"http://127.0.0.1:{_free_port()}"
    config = DemoConfig("reviews", "v1", "127.0.0.1", _free_port(), {"ratings": dead})
    runner = await _start(config)
    try:
        status, body = await _get(f"http://127.0.0.1:{config.port}/reviews/0")
    finally:
        await runner.cleanup()
    assert status == 200
    assert body["data"]["ratings"]["status"] == 503
    assert body["data"]["reviews"][0]["rating"]["stars"] is None


async def test_upstream_denial_is_passed_through_with_its_status(bookinfo):
    async def deny(request: web.Request) -> web.Response:
        return web.Response(status=403, text="RBAC: access denied")

    app = web.Application()
    app.router.add_get("/ratings/{id}", deny)
    runner = web.AppRunner(app)
    await runner.setup()
    port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    config = DemoConfig(
        "reviews", "v1", "127.0.0.1", _free_port(), {"ratings": f"http://127.0.0.1:{port}"}
    )
    reviews = await _start(config)
    try:
        _, body = await _get(f"http://127.0.0.1:{config.port}/reviews/0")
    finally:
        await reviews.cleanup()
        await runner.cleanup()
    assert body["data"]["ratings"] == {
        "status": 403,
        "service": "ratings",
        "error": "RBAC: access denied",
    }


def test_unknown_service_is_refused():
    with pytest.raises(ConfigError, match="unknown service 'shop'"):
        DemoConfig("shop")


async def test_unknown_path_is_404(bookinfo):
    async with aiohttp.ClientSession() as s, s.get(bookinfo["details"] + "/reviews/0") as resp:
        assert resp.status == 404
