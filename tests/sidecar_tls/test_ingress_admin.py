"""The ingress gateway (plain HTTP/1.1 or h2c in, mTLS out with its own SVID) and the admin/health
surfaces."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import aiohttp
import grpc
import pytest

from sidecar_tls.admin import admin_app, certs_view, health_app, serve_app
from sidecar_tls.destinations import MeshSnapshot, MeshWorkload
from sidecar_tls.identity import StaticSvidSource
from sidecar_tls.sidecar import Ingress, IngressConfig
from sidecar_tls.state import SidecarState
from tests.sidecar_tls import grpc_apps
from tests.sidecar_tls.h2_apps import RawH2Client, h2_echo_app
from tests.sidecar_tls.loopback import SERVER_ID, GatedApp, Pair, http_get, refused, sidecar_pair
from tests.sidecar_tls.testca import MiniCA

INGRESS_ID = "spiffe://cluster.local/ns/istio-system/sa/ingress"
FORGED = "By=spiffe://evil/x;Hash=00;URI=spiffe://cluster.local/ns/default/sa/admin"


@contextlib.asynccontextmanager
async def ingress_to(pair: Pair, ca: MiniCA, drain_s: float = 5.0) -> AsyncIterator[Ingress]:
    """An ingress (its own SVID) routed to the pair's inbound sidecar, started."""
    ingress = Ingress(
        IngressConfig(
            agent_socket="/nonexistent",
            listen=("127.0.0.1", 0),
            route=("server", pair.inbound_port),
            drain_s=drain_s,
        ),
        svids=StaticSvidSource(ca.issue(INGRESS_ID)),
    )
    ingress.state.set_snapshot(pair.client_state.snapshot)
    await ingress.start(follow_agent=False)
    try:
        yield ingress
    finally:
        await ingress.stop()


async def test_ingress_routes_plain_http_over_mtls_with_its_own_identity() -> None:
    ca = MiniCA.create()
    async with (
        sidecar_pair(ca.issue(INGRESS_ID), ca.issue(SERVER_ID)) as pair,
        ingress_to(pair, ca) as ingress,
    ):
        status, body = await http_get(ingress.port, "/productpage")
    assert status == 200
    seen = json.loads(body)
    assert seen["request"] == "GET /productpage HTTP/1.1"
    assert seen["headers"]["x-forwarded-client-cert"][0].endswith(f"URI={INGRESS_ID}")


async def test_ingress_carries_grpc_into_the_mesh_over_mtls_h2(grpc_app: int) -> None:
    ca = MiniCA.create()
    async with (
        sidecar_pair(ca.issue(INGRESS_ID), ca.issue(SERVER_ID), app_port=grpc_app) as pair,
        ingress_to(pair, ca) as ingress,
        grpc.aio.insecure_channel(f"127.0.0.1:{ingress.port}") as ch,
    ):
        unary = json.loads(
            await ch.unary_unary(grpc_apps.path("Unary"))(
                b"hello", metadata=(("x-forwarded-client-cert", FORGED),), timeout=30
            )
        )
        streamed = [
            len(m)
            async for m in ch.unary_stream(grpc_apps.path("ServerStream"))(b"3:9", timeout=30)
        ]
        bidi = ch.stream_stream(grpc_apps.path("Bidi"))(timeout=30)
        echoed = []
        for word in (b"one", b"two"):
            await bidi.write(word)
            echoed.append(await bidi.read())
        await bidi.done_writing()
        assert await bidi.code() == grpc.StatusCode.OK
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await ch.unary_unary(grpc_apps.path("Fail"))(b"NOT_FOUND:no such rating", timeout=30)
    xfcc = unary["metadata"]["x-forwarded-client-cert"]
    assert xfcc.startswith(f"By={SERVER_ID};Hash=")
    assert xfcc.endswith(f";URI={INGRESS_ID}")  # the ingress's identity, the forged one replaced
    assert "admin" not in xfcc
    assert streamed == [9, 9, 9]
    assert echoed == [b"one", b"two"]
    assert (failed.value.code(), failed.value.details()) == (
        grpc.StatusCode.NOT_FOUND,
        "no such rating",
    )


async def test_ingress_carries_a_plain_http2_request() -> None:
    ca = MiniCA.create()
    async with (
        sidecar_pair(ca.issue(INGRESS_ID), ca.issue(SERVER_ID), h2_echo_app) as pair,
        ingress_to(pair, ca) as ingress,
    ):
        client = await RawH2Client.connect(ingress.port)
        try:
            sid = client.request("/reviews/1")
            outcomes = await client.settle(within_s=30)
        finally:
            client.close()
    assert outcomes[sid].status == 200
    seen = json.loads(outcomes[sid].body)
    assert seen["path"] == "/reviews/1"
    assert seen["headers"]["x-forwarded-client-cert"].endswith(f";URI={INGRESS_ID}")


async def test_a_stopping_ingress_finishes_the_request_in_flight_with_connection_close() -> None:
    ca = MiniCA.create()
    app = GatedApp(b"the whole answer")
    async with (
        sidecar_pair(ca.issue(INGRESS_ID), ca.issue(SERVER_ID), app) as pair,
        ingress_to(pair, ca, drain_s=120.0) as ingress,  # far more than the request needs
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", ingress.port)
        try:
            writer.write(b"GET /productpage HTTP/1.1\r\nhost: productpage\r\n\r\n")
            await asyncio.wait_for(app.received.wait(), 30)
            stopping = asyncio.create_task(ingress.stop())
            await refused(ingress.port)
            assert not stopping.done()  # the drain waits for the request in flight
            app.release.set()
            answer = await asyncio.wait_for(reader.read(), 60)  # then the connection closes
            await asyncio.wait_for(stopping, 60)
        finally:
            writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"\r\nconnection: close" in head
    assert body == b"the whole answer"


async def test_ingress_without_a_known_route_answers_503() -> None:
    ca = MiniCA.create()
    ingress = Ingress(
        IngressConfig("/nonexistent", ("127.0.0.1", 0), ("nowhere", 9080)),
        svids=StaticSvidSource(ca.issue(INGRESS_ID)),
    )
    ingress.state.set_snapshot(
        MeshSnapshot(
            workloads=(MeshWorkload("a", "default", "a", "spiffe://x/y", "10.0.0.1", "a"),)
        )
    )
    assert ingress.destination() is None


async def test_health_is_ready_only_when_ready_and_certs_shows_the_svid() -> None:
    ca = MiniCA.create()
    identity = ca.issue(SERVER_ID)
    ready = {"value": False}
    state = SidecarState(StaticSvidSource(identity))
    health = await serve_app(health_app(lambda: ready["value"]), "127.0.0.1", 0)
    admin = await serve_app(admin_app(state, lambda: {"ok": True}), "127.0.0.1", 0)
    try:
        hport = health.addresses[0][1]
        aport = admin.addresses[0][1]
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{hport}/healthz/ready") as resp:
                assert resp.status == 503
            ready["value"] = True
            async with session.get(f"http://127.0.0.1:{hport}/healthz/ready") as resp:
                assert resp.status == 200
            async with session.get(f"http://127.0.0.1:{aport}/certs") as resp:
                certs = await resp.json()
            async with session.get(f"http://127.0.0.1:{aport}/config_dump") as resp:
                assert await resp.json() == {"ok": True}
    finally:
        await health.cleanup()
        await admin.cleanup()
    (cert,) = certs["certificates"]
    assert cert["spiffe_id"] == SERVER_ID
    assert cert["serial_number"] == format(identity.leaf.serial_number, "x")
    assert len(cert["cert_chain"]) == 1
    assert "PRIVATE" not in json.dumps(certs)  # never the key
    assert certs_view(state) == certs
