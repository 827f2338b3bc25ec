"""Assembles the control plane: key material, registry/policy watcher, gRPC servicers, TLS port.

The server's own certificate is issued by the CA at start (URI SAN = the control plane's SPIFFE ID,
DNS SANs `localhost` and `meshward-control-plane`) and re-issued at half-life.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import signal
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric import ec

from ca import audit
from ca.authority import cert_pem, key_pem, load_authority
from ca.config import CaConfig
from ca.front_door import TlsFrontDoor, server_ssl_context
from ca.issuer import SigningAuthority, issue_svid
from ca.join_tokens import JoinTokenStore
from ca.mesh_state import MeshStateSource
from ca.metrics import CaMetrics, start_metrics_server
from ca.rate_limit import RateLimiter
from ca.service import CertificateService, DiscoveryService, PeerAuthenticator
from meshward_common.clock import Clock, utc_now
from meshward_common.grpc_boundary import StatusBoundary
from meshward_common.protos import istio_ca_pb2_grpc
from meshward_common.protos import meshward_discovery_pb2_grpc as discovery_pb2_grpc
from meshward_common.spiffe_id import control_plane_id
from meshward_common.tls_files import load_cert_chain_pem

log = logging.getLogger(__name__)

SERVER_DNS_NAMES = ("localhost", "meshward-control-plane")
SERVER_CERT_TTL = dt.timedelta(hours=24)
# A CSR is < 8 kB; gRPC refuses anything above this with RESOURCE_EXHAUSTED before we parse it.
MAX_MESSAGE_BYTES = 64 * 1024
AUDIT_LOG = "audit.log"
ROTATION_CHECK_SECONDS = 30.0


@dataclass
class ServerCert:
    cert_pem: bytes
    key_pem: bytes
    not_before: dt.datetime
    not_after: dt.datetime


def issue_server_cert(
    authority: SigningAuthority, trust_domain: str, now: dt.datetime
) -> ServerCert:
    key = ec.generate_private_key(ec.SECP256R1())
    chain = issue_svid(
        authority,
        key.public_key(),
        control_plane_id(trust_domain),
        SERVER_CERT_TTL,
        now,
        dns_names=SERVER_DNS_NAMES,
    )
    leaf = chain[0]
    return ServerCert(
        cert_pem(*chain[:-1]),  # leaf and intermediates; peers hold the root
        key_pem(key),
        leaf.not_valid_before_utc,
        leaf.not_valid_after_utc,
    )


class ControlPlane:
    """The running control plane. `start()` returns once it accepts connections."""

    def __init__(self, config: CaConfig, clock: Clock = utc_now) -> None:
        self.config = config
        self.clock = clock
        self._tasks: list[asyncio.Task[None]] = []
        self._grpc: grpc.aio.Server | None = None
        self._door: TlsFrontDoor | None = None
        self._audit: audit.AuditLog | None = None
        self.port = 0
        self.metrics_address: tuple[str, int] | None = None

    async def start(self) -> None:
        cfg = self.config
        now = self.clock()
        authority = load_authority(cfg.state_dir, cfg.plugin_ca_dir, cfg.trust_domain, now)
        self.authority = authority
        mesh = MeshStateSource(cfg.registry, cfg.policy_dir, cfg.trust_domain, cfg.root_namespace)
        mesh.load_initial()
        self._audit = audit.AuditLog(cfg.state_dir / AUDIT_LOG)
        bundle_pem = cert_pem(*authority.roots).decode()
        server_cert = issue_server_cert(authority, cfg.trust_domain, now)
        ssl_ctx = server_ssl_context(server_cert.cert_pem, server_cert.key_pem, bundle_pem)
        self.server_cert = server_cert

        self._grpc = grpc.aio.server(
            interceptors=[StatusBoundary(self._caller_source)],
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )
        upstream_port = self._grpc.add_insecure_port("127.0.0.1:0")
        door = TlsFrontDoor(ssl_ctx, "127.0.0.1", upstream_port)
        self._door = door
        auth = PeerAuthenticator(
            authority, cfg.trust_domain, door.peers, JoinTokenStore(cfg.state_dir)
        )
        limiter = RateLimiter(cfg.rate_limit, cfg.rate_burst)
        metrics = CaMetrics()
        if cfg.metrics_listen is not None:
            self.metrics_address = start_metrics_server(*cfg.metrics_listen, metrics)
            log.info("metrics on http://%s:%d/metrics", *self.metrics_address)
        istio_ca_pb2_grpc.add_IstioCertificateServiceServicer_to_server(  # type: ignore[no-untyped-call]
            CertificateService(
                authority,
                auth,
                mesh,
                limiter,
                self._audit,
                cfg.workload_ttl,
                cfg.max_ttl,
                self.clock,
                metrics,
            ),
            self._grpc,
        )
        discovery_pb2_grpc.add_MeshDiscoveryServicer_to_server(  # type: ignore[no-untyped-call]
            DiscoveryService(auth, mesh, self.clock), self._grpc
        )
        await self._grpc.start()
        self.port = await door.start(cfg.host, cfg.port)
        self._tasks.append(asyncio.create_task(mesh.watch()))
        self._tasks.append(
            asyncio.create_task(self._rotate_server_cert(ssl_ctx, server_cert, authority))
        )

    def _caller_source(self, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        """The TLS client's address for the refusal log, not the front door's loopback port."""
        info = self._door.peers.lookup(context.peer()) if self._door is not None else None
        return info.remote.rpartition(":")[0] if info is not None else str(context.peer())

    async def _rotate_server_cert(
        self, ctx: ssl.SSLContext, cert: ServerCert, authority: SigningAuthority
    ) -> None:
        # Poll rather than sleep until half-life: a suspended host or a stepped clock must not
        # leave the server presenting an expired certificate.
        while True:
            await asyncio.sleep(ROTATION_CHECK_SECONDS)
            now = self.clock()
            if now < cert.not_before + (cert.not_after - cert.not_before) / 2:
                continue
            cert = issue_server_cert(authority, self.config.trust_domain, now)
            # New handshakes use the new certificate; open connections keep theirs.
            load_cert_chain_pem(ctx, cert.cert_pem, cert.key_pem)
            self.server_cert = cert
            log.info("server certificate rotated, valid until %s", cert.not_after.isoformat())

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._door is not None:
            await self._door.close()
        if self._grpc is not None:
            await self._grpc.stop(grace=1.0)
        if self._audit is not None:
            self._audit.close()


async def serve(config: CaConfig, announce: Callable[[str], None]) -> None:
    """Run until SIGTERM/SIGINT, announcing `meshward ca: serving on HOST:PORT` when ready."""
    plane = ControlPlane(config)
    await plane.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    host = f"[{config.host}]" if ":" in config.host else config.host
    announce(f"meshward ca: serving on {host}:{plane.port}")
    try:
        await stop.wait()
    finally:
        await plane.stop()
