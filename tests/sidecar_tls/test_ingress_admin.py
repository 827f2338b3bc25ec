"""The ingress gateway (plain HTTP in, mTLS out with its own SVID) and the admin/health surfaces."""

from __future__ import annotations

import json

import aiohttp

from sidecar_tls.admin import admin_app, certs_view, health_app, serve_app
from sidecar_tls.destinations import MeshSnapshot, MeshWorkload
from sidecar_tls.identity import StaticSvidSource
from sidecar_tls.sidecar import Ingress, IngressConfig
from sidecar_tls.state import SidecarState
from tests.sidecar_tls.loopback import SERVER_ID, http_get, sidecar_pair
from tests.sidecar_tls.testca import MiniCA

INGRESS_ID = "spiffe://cluster.local/ns/istio-system/sa/ingress"


async def test_ingress_routes_plain_http_over_mtls_with_its_own_identity() -> None:
    ca = MiniCA.create()
    async with sidecar_pair(ca.issue(INGRESS_ID), ca.issue(SERVER_ID)) as pair:
        ingress = Ingress(
            IngressConfig(
                agent_socket="/nonexistent",
                listen=("127.0.0.1", 0),
                route=("server", pair.inbound_port),
            ),
            svids=StaticSvidSource(ca.issue(INGRESS_ID)),
        )
        ingress.state.set_snapshot(pair.client_state.snapshot)
        await ingress.start(follow_agent=False)
        try:
            status, body = await http_get(ingress.port, "/productpage")
        finally:
            await ingress.stop()
    assert status == 200
    seen = json.loads(body)
    assert seen["request"] == "GET /productpage HTTP/1.1"
    assert seen["headers"]["x-forwarded-client-cert"][0].endswith(f"URI={INGRESS_ID}")


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
