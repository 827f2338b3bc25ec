"""The sidecar's small HTTP surfaces (not on the data path, so aiohttp is fine here):
`:15021/healthz/ready` (ready once the SVID is loaded and the listeners are up) and the pod-local
admin on `127.0.0.1:15000` (`/certs`: the current SVID; `/config_dump`: what the sidecar runs with)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives import serialization

from sidecar_tls.state import SidecarState


def certs_view(state: SidecarState) -> dict[str, Any]:
    """The current SVID as `istioctl proxy-config secret` users expect: ID, serial, validity, chain."""
    if not state.ready:
        return {"certificates": []}
    identity = state.material.identity
    chain = []
    for cert in identity.chain:
        chain.append(
            {
                "subject": cert.subject.rfc4514_string(),
                "issuer": cert.issuer.rfc4514_string(),
                "serial_number": format(cert.serial_number, "x"),
                "valid_from": cert.not_valid_before_utc.isoformat(),
                "expiration_time": cert.not_valid_after_utc.isoformat(),
                "pem": cert.public_bytes(serialization.Encoding.PEM).decode(),
            }
        )
    leaf = identity.leaf
    return {
        "certificates": [
            {
                "name": "default",
                "spiffe_id": str(identity.spiffe_id),
                "serial_number": format(leaf.serial_number, "x"),
                "valid_from": leaf.not_valid_before_utc.isoformat(),
                "expiration_time": leaf.not_valid_after_utc.isoformat(),
                "cert_chain": chain,
                "trust_domains": sorted(identity.bundles),
                "root_certs": [
                    {
                        "trust_domain": td,
                        "subject": root.subject.rfc4514_string(),
                        "serial_number": format(root.serial_number, "x"),
                        "expiration_time": root.not_valid_after_utc.isoformat(),
                    }
                    for td, roots in sorted(identity.bundles.items())
                    for root in roots
                ],
            }
        ]
    }


def health_app(ready: Callable[[], bool]) -> web.Application:
    async def readiness(_request: web.Request) -> web.Response:
        if ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready\n")

    app = web.Application()
    app.router.add_get("/healthz/ready", readiness)
    return app


def admin_app(state: SidecarState, config: Callable[[], dict[str, Any]]) -> web.Application:
    async def certs(_request: web.Request) -> web.Response:
        return web.json_response(certs_view(state))

    async def config_dump(_request: web.Request) -> web.Response:
        return web.json_response(config())

    app = web.Application()
    app.router.add_get("/certs", certs)
    app.router.add_get("/config_dump", config_dump)
    return app


async def serve_app(app: web.Application, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
