"""This trust domain's SPIFFE bundle endpoint (`https_spiffe` profile), served by the supervisor.

GET / answers the bundle (JWK Set, `application/json`) with every root in force — both while a
root rotates, so a federated mesh trusts the new root before anything is signed with it — its
`spiffe_sequence` (kept in the state database: it only grows, across restarts too, and moves
whenever the roots change) and `spiffe_refresh_hint`. TLS presents an X.509-SVID for the control
plane's SPIFFE ID (`spiffe://<td>/meshward/control-plane`, the endpoint ID other meshes configure),
issued by this CA, re-issued at half-life and when the signer changes. No client authentication
(the spec forbids requiring it). One process serves it: fetches come every few minutes per peer.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
from pathlib import Path
from typing import Any

from cryptography import x509

from ca.authority import TRUST_BUNDLE
from ca.config import CaConfig
from ca.https_cert import HttpsServerCert
from ca.published import PublishedAuthority
from ca.publisher import Publisher
from ca.store import CaStore
from meshward_common.clock import Clock
from meshward_common.errors import ConfigError
from meshward_common.https_site import start_https_site
from meshward_common.spiffe_bundle import SpiffeBundle, encode_bundle
from meshward_common.svid import fingerprint_sha256

log = logging.getLogger(__name__)

SEQUENCE = "bundle_sequence"  # published row: version = digest of the roots, data = sequence
DNS_NAMES = ("localhost", "meshward-control-plane")


def roots_digest(authority: PublishedAuthority) -> str:
    joined = ",".join(sorted(fingerprint_sha256(r) for r in authority.roots))
    return hashlib.sha256(joined.encode()).hexdigest()[:16]


def next_sequence(previous: tuple[str, int] | None, digest: str) -> int:
    """The bundle's sequence number: 1 at first, one more whenever the roots change."""
    if previous is None:
        return 1
    held_digest, held = previous
    return held if held_digest == digest else held + 1


class BundleEndpoint:
    def __init__(
        self,
        authority: PublishedAuthority,
        trust_domain: str,
        store: CaStore,
        host: str,
        port: int,
        refresh_hint: dt.timedelta,
        clock: Clock,
    ) -> None:
        self.trust_domain = trust_domain
        self.store = store
        self.host = host
        self.port = port
        self.refresh_hint = max(1, int(refresh_hint.total_seconds()))
        self.clock = clock
        self.authority = authority
        self.cert = HttpsServerCert(authority, trust_domain, DNS_NAMES, clock)
        self.body = b""
        self.sequence = 0
        self._set_body()
        self._runner: Any = None
        self._task: asyncio.Task[None] | None = None

    def _set_body(self) -> None:
        digest = roots_digest(self.authority)
        row = self.store.published(SEQUENCE)
        previous = (row.version, int(row.data)) if row is not None else None
        self.sequence = next_sequence(previous, digest)
        if previous is None or previous != (digest, self.sequence):
            self.store.publish(SEQUENCE, digest, str(self.sequence).encode())
        bundle = SpiffeBundle(
            self.trust_domain, self.authority.roots, self.sequence, self.refresh_hint
        )
        self.body = encode_bundle(bundle)

    def use(self, authority: PublishedAuthority) -> None:
        """A new signing authority: serve its roots, and present a certificate of its signer
        at once (federated meshes have held the new root since it entered the bundle)."""
        self.authority = authority
        self._set_body()
        if self.cert.use(authority):
            self.cert.reissue(self.clock())

    async def start(self) -> None:
        from aiohttp import web

        async def bundle(request: web.Request) -> web.StreamResponse:
            return web.Response(body=self.body, content_type="application/json", charset="utf-8")

        app = web.Application()
        app.router.add_get("/", bundle)
        self._runner, self.port = await start_https_site(
            app, self.host, self.port, self.cert.ssl_context, "bundle-endpoint-listen"
        )
        self._task = asyncio.create_task(self.cert.follow())
        log.info(
            "SPIFFE bundle endpoint on https://%s:%d/ (sequence %d)",
            self.host, self.port, self.sequence,
        )  # fmt: skip

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()


async def start_bundle_endpoint(
    config: CaConfig, publisher: Publisher, clock: Clock
) -> BundleEndpoint | None:
    """The bundle endpoint when configured, following the publisher's signing authority."""
    if config.bundle_endpoint_listen is None:
        return None
    assert publisher.authority is not None
    endpoint = BundleEndpoint(
        publisher.authority,
        config.trust_domain,
        publisher.store,
        *config.bundle_endpoint_listen,
        config.bundle_endpoint_refresh_hint,
        clock,
    )
    await endpoint.start()
    publisher.on_authority(endpoint.use)
    return endpoint


def stored_bundle(state_dir: Path, fmt: str) -> bytes:
    """The bundle of a control plane's state directory, as SPIFFE JSON or PEM roots (for
    `meshward ca bundle show`): every root in force and the sequence its endpoint serves."""
    path = state_dir / TRUST_BUNDLE
    try:
        pem = path.read_bytes()
        roots = tuple(x509.load_pem_x509_certificates(pem))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror} (has the CA run here?)") from exc
    except ValueError as exc:
        raise ConfigError(f"{path}: not PEM certificates: {exc}") from exc
    if fmt == "pem":
        return pem
    if not (state_dir / "ca.db").exists():
        return encode_bundle(SpiffeBundle("", roots))
    store = CaStore(state_dir)
    try:
        row = store.published(SEQUENCE)
    finally:
        store.close()
    return encode_bundle(SpiffeBundle("", roots, int(row.data) if row is not None else None))
