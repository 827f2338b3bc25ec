"""One serving control plane: the gRPC servicers on the TLS port(s), fed by what the supervisor
published (`ca.published`), with the per-call shared state in the state database (`ca.store`).

`CaWorker` is what each worker process runs. `ControlPlane` runs a publisher and one worker in
one process (tests, and anything embedding the CA); `ca.supervisor` runs the publisher and N
worker processes (`meshward ca serve`).

Ports: the TLS port (15012, Istio's) asks for a client certificate and takes a join token when
there is none; grpcio cannot do that, so a front door ends TLS there (`ca.front_door`). The
optional mTLS port (`mtls-listen`) requires a node SVID and is served natively (`ca.native_port`:
TLS, HTTP/2 and gRPC framing in Rust, the same servicers in Python), with no relay: node agents
renew and stream the mesh state over it at a fraction of grpcio's CPU per call.

The server's own certificate is issued by the CA at start (URI SAN = the control plane's SPIFFE ID,
DNS SANs `localhost` and `meshward-control-plane`), re-issued at half-life and whenever the signer
changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from cryptography.hazmat.primitives.asymmetric import ec

from ca import audit
from ca.authority import cert_pem, key_pem
from ca.config import CaConfig
from ca.front_door import CaFrontDoor, peer_info, server_ssl_context
from ca.issuer import SigningAuthority, issue_svid
from ca.join_tokens import JoinTokenStore
from ca.metrics import CaMetrics
from ca.native_port import NativeGrpcPort, NativePeers
from ca.published import Publications, PublishedAuthority
from ca.publisher import Publisher
from ca.rate_limit import RateLimiter
from ca.service import CertificateService, DiscoveryService, PeerAuthenticator
from ca.store import CaStore

if TYPE_CHECKING:
    from ca.kube.tokens import KubeTokenAuthenticator
from meshward_common.clock import Clock, utc_now
from meshward_common.front_door import (
    DESCRIPTORS_PER_CONNECTION,
    DoorLimits,
    listening_socket,
    raise_descriptor_limit,
)
from meshward_common.grpc_boundary import StatusBoundary
from meshward_common.limits import MESH_STATE_MESSAGE_LIMIT
from meshward_common.protos import istio_ca_pb2_grpc
from meshward_common.protos import meshward_discovery_pb2_grpc as discovery_pb2_grpc
from meshward_common.spiffe_id import control_plane_id

log = logging.getLogger(__name__)

SERVER_DNS_NAMES = ("localhost", "meshward-control-plane")
SERVER_CERT_TTL = dt.timedelta(hours=24)
# A CSR is < 8 kB; gRPC refuses anything above this with RESOURCE_EXHAUSTED before we parse it.
MAX_MESSAGE_BYTES = 64 * 1024
AUDIT_LOG = "audit.log"
ROTATION_CHECK_SECONDS = 30.0
# Istio's istiod pings every 30 s and waits 10 s for the answer.
KEEPALIVE_MAX = dt.timedelta(seconds=30)
KEEPALIVE_TIMEOUT = dt.timedelta(seconds=10)
# Descriptors for everything but relayed connections: logs, state files, the gRPC servers' own.
RESERVED_DESCRIPTORS = 256


@dataclass
class ServerCert:
    cert_pem: bytes
    key_pem: bytes
    not_before: dt.datetime
    not_after: dt.datetime


def issue_server_cert(
    authority: SigningAuthority,
    trust_domain: str,
    now: dt.datetime,
    dns_names: Sequence[str] = SERVER_DNS_NAMES,
) -> ServerCert:
    key = ec.generate_private_key(ec.SECP256R1())
    chain = issue_svid(
        authority,
        key.public_key(),
        control_plane_id(trust_domain),
        SERVER_CERT_TTL,
        now,
        dns_names=dns_names,
    )
    leaf = chain[0]
    return ServerCert(
        cert_pem(*chain[:-1]),  # leaf and intermediates; peers hold the root
        key_pem(key),
        leaf.not_valid_before_utc,
        leaf.not_valid_after_utc,
    )


def new_ssl_context(cert: ServerCert, bundle_pem: bytes) -> ssl.SSLContext:
    return server_ssl_context(cert.cert_pem, cert.key_pem, bundle_pem.decode())


def door_limits(cfg: CaConfig) -> DoorLimits:
    """The front door's caps, within what this process's descriptors allow (raised to the hard
    limit first: the usual soft limit of 1024 is only ~300 relayed connections)."""
    descriptors = raise_descriptor_limit()
    fits = max(1, (descriptors - RESERVED_DESCRIPTORS) // DESCRIPTORS_PER_CONNECTION)
    total = min(cfg.max_connections, fits)
    if total < cfg.max_connections:
        log.warning(
            "max-connections lowered from %d to %d: the descriptor limit is %d",
            cfg.max_connections,
            total,
            descriptors,
        )
    return DoorLimits(
        handshake_timeout=cfg.handshake_timeout.total_seconds(),
        idle_timeout=cfg.idle_timeout.total_seconds(),
        max_connections=total,
        max_per_source=cfg.max_connections_per_source,
    )


def keepalive_timing(idle_timeout: dt.timedelta) -> tuple[dt.timedelta, dt.timedelta]:
    """(ping every, wait for the answer): the gRPC servers ping every connection well within the
    door's idle timeout, so a caller that answers (every HTTP/2 client does) is never idle,
    however quiet its streams; one that does not answer is closed after the wait."""
    every = min(KEEPALIVE_MAX, idle_timeout / 3)
    return every, min(every, KEEPALIVE_TIMEOUT)


def keepalive_options(idle_timeout: dt.timedelta) -> list[tuple[str, int]]:
    """`keepalive_timing` as grpcio's channel arguments."""
    every, wait = keepalive_timing(idle_timeout)
    return [
        ("grpc.keepalive_time_ms", max(100, int(every.total_seconds() * 1000))),
        ("grpc.keepalive_timeout_ms", max(100, int(wait.total_seconds() * 1000))),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


class CaWorker:
    """Serves the CA's gRPC API. `start()` returns once it accepts connections.

    `listen_sock`, `mtls_sock`: listening sockets shared with other workers (else it listens on
    config's listen and mtls-listen itself).
    """

    def __init__(
        self,
        config: CaConfig,
        store: CaStore,
        clock: Clock = utc_now,
        *,
        listen_sock: socket.socket | None = None,
        mtls_sock: socket.socket | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.listen_sock = listen_sock
        self.mtls_sock = mtls_sock
        self.publications = Publications(store, config.trust_domain)
        self.metrics = CaMetrics()
        self._tasks: list[asyncio.Task[None]] = []
        self._relayed: grpc.aio.Server | None = None  # what the front door relays to
        self._door: CaFrontDoor | None = None
        self._audit: audit.AuditLog | None = None
        self._mtls: NativeGrpcPort | None = None
        self._limiter: RateLimiter | None = None
        self._auths: list[PeerAuthenticator] = []
        self._services: list[CertificateService] = []
        self.port = 0
        self.mtls_port: int | None = None
        self._bearer: KubeTokenAuthenticator | None = None

    @property
    def authority(self) -> SigningAuthority:
        assert self.publications.authority is not None
        return self.publications.authority.signer

    async def start(self) -> None:
        cfg = self.config
        await self.publications.refresh()
        published = self.publications.authority
        assert published is not None
        self._audit = audit.AuditLog(cfg.state_dir / AUDIT_LOG)
        self.server_cert = issue_server_cert(published.signer, cfg.trust_domain, self.clock())
        bundle_pem = cert_pem(*published.roots)
        ssl_ctx = new_ssl_context(self.server_cert, bundle_pem)
        tokens = JoinTokenStore(self.store)
        self._limiter = limiter = RateLimiter(cfg.state_dir, cfg.rate_limit, cfg.rate_burst)
        bearer = None
        if cfg.kubernetes:
            from ca.kube.wiring import kube_tokens

            bearer = self._bearer = await kube_tokens(cfg, self.publications.mesh)
        limits = door_limits(cfg)
        relayed = self._relayed = self._relayed_server()
        upstream_port = relayed.add_insecure_port("127.0.0.1:0")
        door = CaFrontDoor(
            upstream_port,
            peer_info,
            ssl_context=ssl_ctx,
            limits=limits,
            name="control plane",
        )
        self._door = door
        self._add_services(
            StatusBoundary(self._relayed_source),
            relayed,
            PeerAuthenticator(published, cfg.trust_domain, door.peers, tokens, bearer),
            limiter,
        )
        if cfg.mtls_listen is not None:
            sock = self.mtls_sock or listening_socket(*cfg.mtls_listen, what="mtls-listen")
            self._mtls = mtls = NativeGrpcPort(
                sock,
                self.server_cert.cert_pem,
                self.server_cert.key_pem,
                bundle_pem,
                limits=limits,
                keepalive=keepalive_timing(cfg.idle_timeout),
                max_message=MAX_MESSAGE_BYTES,
            )
            self.mtls_port = mtls.port
            self._add_services(
                StatusBoundary(_remote_host),
                mtls,
                PeerAuthenticator(published, cfg.trust_domain, NativePeers(), tokens),
                limiter,
            )
        await relayed.start()
        if self._mtls is not None:
            self._mtls.start()
        self.port = await door.start_tcp(cfg.host, cfg.port, sock=self.listen_sock)
        self.publications.on_authority(self._use_authority)
        self._tasks.append(asyncio.create_task(self.publications.follow()))
        self._tasks.append(asyncio.create_task(self._rotate_server_cert()))

    def _relayed_source(self, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        """The TLS client's address for the refusal log, not the front door's loopback port."""
        info = self._door.peers.lookup(context.peer()) if self._door is not None else None
        return info.remote.rpartition(":")[0] if info is not None else str(context.peer())

    def _relayed_server(self) -> grpc.aio.Server:
        return grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MESH_STATE_MESSAGE_LIMIT),
                ("grpc.so_reuseport", 0),
                *keepalive_options(self.config.idle_timeout),
            ],
        )

    def _add_services(
        self,
        boundary: StatusBoundary,
        server: grpc.aio.Server | NativeGrpcPort,
        auth: PeerAuthenticator,
        limiter: RateLimiter,
    ) -> None:
        cfg = self.config
        assert self._audit is not None
        mesh = self.publications.mesh
        service = CertificateService(
            auth,
            mesh,
            limiter,
            self._audit,
            cfg.workload_ttl,
            cfg.max_ttl,
            self.clock,
            self.metrics,
            catch_up=self.publications.refresh,
        )
        boundary.add(
            server, istio_ca_pb2_grpc.add_IstioCertificateServiceServicer_to_server, service
        )
        boundary.add(
            server,
            discovery_pb2_grpc.add_MeshDiscoveryServicer_to_server,
            DiscoveryService(auth, mesh, self.clock),
        )
        self._auths.append(auth)
        self._services.append(service)

    async def _use_authority(self, published: PublishedAuthority) -> None:
        """A new signer or bundle: every check and signature uses it from the next call on, and
        the server presents a certificate of the new signer."""
        for auth in self._auths:
            auth.use(published)
        await self._install_server_cert(
            issue_server_cert(published.signer, self.config.trust_domain, self.clock())
        )

    async def _install_server_cert(self, cert: ServerCert) -> None:
        published = self.publications.authority
        assert published is not None
        assert self._door is not None
        bundle_pem = cert_pem(*published.roots)
        self._door.use_ssl_context(new_ssl_context(cert, bundle_pem))
        if self._mtls is not None:
            self._mtls.use_tls(cert.cert_pem, cert.key_pem, bundle_pem)
        self.server_cert = cert
        log.info("server certificate valid until %s", cert.not_after.isoformat())

    async def _rotate_server_cert(self) -> None:
        # Poll rather than sleep until half-life: a suspended host or a stepped clock must not
        # leave the server presenting an expired certificate.
        while True:
            await asyncio.sleep(ROTATION_CHECK_SECONDS)
            cert, now = self.server_cert, self.clock()
            if now < cert.not_before + (cert.not_after - cert.not_before) / 2:
                continue
            await self._install_server_cert(
                issue_server_cert(self.authority, self.config.trust_domain, now)
            )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._door is not None:
            await self._door.close()
        if self._mtls is not None:
            await self._mtls.stop()
        if self._relayed is not None:
            await self._relayed.stop(grace=1.0)
        if self._audit is not None:
            self._audit.close()
        if self._limiter is not None:
            self._limiter.close()
        if self._bearer is not None:
            await self._bearer.api.close()


def _remote_host(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    return str(context.peer())


class ControlPlane:
    """A publisher and one worker in this process: the whole control plane, for tests and for
    embedding. `start()` returns once it accepts connections."""

    def __init__(self, config: CaConfig, clock: Clock = utc_now) -> None:
        self.config = config
        self.clock = clock
        self._stores: list[CaStore] = []
        self._task: asyncio.Task[None] | None = None
        self.worker: CaWorker | None = None
        self.publisher: Publisher | None = None
        self.bundle_endpoint: Any = None  # ca.bundle_endpoint.BundleEndpoint, when configured

    async def start(self) -> None:
        from ca.authority import ensure_state_dir

        ensure_state_dir(self.config.state_dir)
        publisher_store, worker_store = (
            CaStore(self.config.state_dir),
            CaStore(self.config.state_dir),
        )
        self._stores = [publisher_store, worker_store]
        self.publisher = Publisher(self.config, publisher_store, self.clock)
        await self.publisher.start()
        self.worker = CaWorker(self.config, worker_store, self.clock)
        await self.worker.start()
        from ca.bundle_endpoint import start_bundle_endpoint

        self.bundle_endpoint = await start_bundle_endpoint(self.config, self.publisher, self.clock)
        self._task = asyncio.create_task(self.publisher.run())

    @property
    def port(self) -> int:
        assert self.worker is not None
        return self.worker.port

    @property
    def authority(self) -> SigningAuthority:
        assert self.worker is not None
        return self.worker.authority

    @property
    def server_cert(self) -> ServerCert:
        assert self.worker is not None
        return self.worker.server_cert

    @property
    def _door(self) -> CaFrontDoor | None:
        return None if self.worker is None else self.worker._door

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.bundle_endpoint is not None:
            await self.bundle_endpoint.stop()
        if self.worker is not None:
            await self.worker.stop()
        for store in self._stores:
            store.close()
