"""The demo apps on loopback, without a mesh: data, received headers, trace propagation, errors."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from meshward.demo.apps import DemoConfig, make_app
from meshward_common.errors import ConfigError

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
    ports = {name: _free_port() for name in ("productpage", "details", "reviews", "ratings")}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    runners = [
        await _start(DemoConfig(name, "v2" if name == "reviews" else "v1", "127.0.0.1", port, urls))
        for name, port in ports.items()
    ]
    try:
        yield urls
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
    assert [h["service"] for h in body["hops"]] == ["productpage", "details", "reviews", "ratings"]


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
