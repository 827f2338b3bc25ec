"""The gRPC servicers: translate between the wire and the pure cores, and nothing else.

They raise meshward errors; `meshward_common.grpc_boundary.StatusBoundary` answers them.

`IstioCertificateService/CreateCertificate`: authenticate (node SVID over mTLS, else a join token),
rate-limit per node, validate CSR and TTL, decide the entitled identity, sign, audit.
`MeshDiscovery/StreamMeshState`: node SVIDs only; the full state now and on every change.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import grpc
from cryptography import x509

from ca import audit
from ca.entitlement import IMPERSONATED_IDENTITY, Caller, entitled_identity
from ca.front_door import CaPeerTable, PeerInfo
from ca.issuer import csr_public_key, effective_ttl, sign_leaf
from ca.join_tokens import JoinTokenStore
from ca.metrics import CaMetrics, IdentityKind
from ca.published import PublishedAuthority
from ca.rate_limit import RateLimiter
from meshward_common.clock import Clock, utc_now
from meshward_common.errors import (
    InvalidRequest,
    MeshwardError,
    PermissionDenied,
    RateLimited,
    SvidError,
    Unauthenticated,
)
from meshward_common.front_door import PeerTable
from meshward_common.grpc_status import status_for
from meshward_common.protos import istio_ca_pb2, istio_ca_pb2_grpc
from meshward_common.protos import meshward_discovery_pb2 as discovery_pb2
from meshward_common.protos import meshward_discovery_pb2_grpc as discovery_pb2_grpc
from meshward_common.registry import Registry
from meshward_common.spiffe_id import SpiffeId, parse_node_id, parse_workload_id
from meshward_common.svid import verify_x509_svid_in

log = logging.getLogger(__name__)

_BEARER = "bearer "
_CACHE_LIMIT = 50_000


class BearerAuthenticator(Protocol):
    """A credential beside node SVIDs and join tokens (ServiceAccount tokens on Kubernetes)."""

    def accepts(self, token: str) -> bool: ...

    async def authenticate(self, token: str) -> Caller: ...


@dataclass(frozen=True)
class Authenticated:
    caller: Caller
    token: str | None  # the join token to redeem once the request is valid


class PeerSource(Protocol):
    """What a TLS port proved about the connection a call came on (None: nothing, refuse)."""

    def peer_of(self, context: grpc.aio.ServicerContext) -> PeerInfo | None: ...


class RelayedPeers:
    """Callers relayed by the front door, looked up by the relayed connection's port."""

    def __init__(self, table: CaPeerTable) -> None:
        self.table = table

    def peer_of(self, context: grpc.aio.ServicerContext) -> PeerInfo | None:
        return self.table.lookup(context.peer())


class PeerAuthenticator:
    """Turns what the TLS port saw (+ call metadata) into an authenticated node caller."""

    def __init__(
        self,
        authority: PublishedAuthority,
        trust_domain: str,
        peers: PeerSource | CaPeerTable,
        tokens: JoinTokenStore,
        bearer: BearerAuthenticator | None = None,
    ) -> None:
        self.trust_domain = trust_domain
        self.peers = RelayedPeers(peers) if isinstance(peers, PeerTable) else peers
        self.tokens = tokens
        self.bearer = bearer  # on Kubernetes: ServiceAccount tokens (ca.kube.tokens)
        # A node renews many workload SVIDs over one connection: verify each client cert once.
        self._verified: dict[bytes, tuple[SpiffeId, dt.datetime]] = {}
        self.use(authority)

    def use(self, authority: PublishedAuthority) -> None:
        """A new signer or trust bundle: calls from now on are checked and signed with it."""
        self.authority = authority
        self._intermediates = authority.intermediates()
        self._verified = {}  # a root may have left the bundle

    def peer_of(self, context: grpc.aio.ServicerContext) -> PeerInfo:
        info = self.peers.peer_of(context)
        if info is None:
            raise Unauthenticated("connection did not come through the control plane's TLS port")
        return info

    def verify_client_cert(self, cert_der: bytes, now: dt.datetime) -> SpiffeId:
        cached = self._verified.get(cert_der)
        if cached is not None and now <= cached[1]:
            return cached[0]
        try:
            leaf = x509.load_der_x509_certificate(cert_der)
            # Python's ssl gives only the leaf; a certificate this CA issued chains through the
            # signing chain in force or an earlier one still trusted.
            # Only this trust domain's bundle: a node of another domain is not ours to serve.
            sid = verify_x509_svid_in(
                [leaf, *self._intermediates], {self.trust_domain: self.authority.roots}, now
            )
        except (SvidError, ValueError) as exc:
            raise Unauthenticated(
                f"client certificate is not a valid SVID of this CA: {exc}"
            ) from exc
        if len(self._verified) >= _CACHE_LIMIT:
            self._verified.clear()
        self._verified[cert_der] = (sid, leaf.not_valid_after_utc)
        return sid

    def node_of(self, sid: SpiffeId) -> str:
        node = parse_node_id(sid) if sid.member_of(self.trust_domain) else None
        if node is None:
            raise PermissionDenied(f"{sid} is not a node agent of trust domain {self.trust_domain}")
        return node

    def authenticate(
        self,
        context: grpc.aio.ServicerContext,
        now: dt.datetime,
        *,
        allow_token: bool,
        info: PeerInfo | None = None,
    ) -> Authenticated:
        """`info` is `peer_of(context)` when the caller already looked it up."""
        if info is None:
            info = self.peer_of(context)
        if info.cert_der is not None:
            sid = self.verify_client_cert(info.cert_der, now)
            return Authenticated(Caller(self.node_of(sid), "mtls"), None)
        token = _bearer_token(context)
        if token is None:
            raise Unauthenticated(
                "no credential: present a node SVID (mTLS) or 'authorization: Bearer <join token>'"
            )
        if not allow_token:
            raise Unauthenticated("join tokens only bootstrap a node SVID; use mTLS here")
        node = self.tokens.check(token, now)
        return Authenticated(Caller(node, "join-token"), token)

    async def authenticate_call(
        self, context: grpc.aio.ServicerContext, now: dt.datetime, info: PeerInfo
    ) -> Authenticated:
        """`authenticate` for CreateCertificate, where a ServiceAccount token is also accepted."""
        if info.cert_der is None and self.bearer is not None:
            token = _bearer_token(context)
            if token is not None and self.bearer.accepts(token):
                return Authenticated(await self.bearer.authenticate(token), None)
        return self.authenticate(context, now, allow_token=True, info=info)


def _bearer_token(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else str(value)
            if not text.lower().startswith(_BEARER) or not text[len(_BEARER) :].strip():
                raise Unauthenticated("authorization metadata must be 'Bearer <join token>'")
            return text[len(_BEARER) :].strip()
    return None


def _kind(requested: str) -> IdentityKind:
    # Metric label only: a workload ID has an /ns/ path, a node ID (or nothing asked) does not.
    return "workload" if "/ns/" in requested else "node"


def _impersonated_identity(request: istio_ca_pb2.IstioCertificateRequest) -> str:
    value = request.metadata.fields.get(IMPERSONATED_IDENTITY)
    if value is None:
        return ""
    if value.WhichOneof("kind") != "string_value":
        raise InvalidRequest(f"metadata {IMPERSONATED_IDENTITY} must be a string SPIFFE ID")
    return str(value.string_value)


class MeshView(Protocol):
    """The mesh state the servicers read (`ca.published.MeshStateView`)."""

    trust_domain: str
    state: discovery_pb2.MeshState
    registry: Registry
    changed: asyncio.Condition


class CertificateService(istio_ca_pb2_grpc.IstioCertificateServiceServicer):
    def __init__(
        self,
        auth: PeerAuthenticator,
        mesh: MeshView,
        limiter: RateLimiter,
        audit_log: audit.AuditLog,
        workload_ttl: dt.timedelta,
        max_ttl: dt.timedelta,
        clock: Clock = utc_now,
        metrics: CaMetrics | None = None,
        catch_up: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.metrics = metrics if metrics is not None else CaMetrics()
        self.auth = auth
        self.mesh = mesh
        # Reads what the supervisor published since this worker last looked (`Publications.
        # refresh`): a node agent acts on a state another worker streamed it, maybe a moment
        # before this worker's poll; its CSR must be judged by that state, not an older one.
        self.catch_up = catch_up
        self.limiter = limiter
        self.audit = audit_log
        self.workload_ttl = workload_ttl
        self.max_ttl = max_ttl
        self.clock = clock

    async def CreateCertificate(
        self,
        request: istio_ca_pb2.IstioCertificateRequest,
        context: grpc.aio.ServicerContext,
    ) -> istio_ca_pb2.IstioCertificateResponse:
        now = self.clock()
        started = time.perf_counter()
        caller_text = "unauthenticated"
        requested = ""
        try:
            if self.catch_up is not None:
                await self.catch_up()
            info = self.auth.peer_of(context)
            caller_text = f"unauthenticated {info.remote}"
            impersonated = _impersonated_identity(request)
            requested = impersonated
            who = await self.auth.authenticate_call(context, now, info)
            caller_text = str(who.caller)
            requested = impersonated or who.caller.node_identity(self.mesh.trust_domain)
            if not self.limiter.allow(who.caller.node, time.monotonic()):
                raise RateLimited(f"node {who.caller.node} is over its CSR rate limit; retry later")
            public_key = csr_public_key(request.csr)
            ttl = effective_ttl(request.validity_duration, self.workload_ttl, self.max_ttl)
            # Nothing impersonated: the node's own ID, without a round trip through its text.
            identity = entitled_identity(
                who.caller, impersonated, self.mesh.registry, self.mesh.trust_domain
            )
            if who.token is not None:
                self.auth.tokens.redeem(who.token, now)
            signer = self.auth.authority.signer
            leaf = sign_leaf(signer, public_key, identity, ttl, now)
        except Exception as exc:  # answered by the StatusBoundary; every refusal is audited here
            code = status_for(exc) if isinstance(exc, MeshwardError) else grpc.StatusCode.INTERNAL
            reason = f"{code.name}: {exc}"
            if isinstance(exc, PermissionDenied) and exc.audit_detail:
                reason += f" ({exc.audit_detail})"  # the operator's detail, not the caller's
            self.audit.write(audit.refused(now, caller_text, requested, reason))
            self.metrics.record_refused(_kind(requested), exc, time.perf_counter() - started)
            raise
        self.audit.write(audit.issued(now, caller_text, str(identity), leaf.serial, leaf.not_after))
        self.metrics.record_issued(
            "workload" if parse_workload_id(identity) else "node", time.perf_counter() - started
        )
        return istio_ca_pb2.IstioCertificateResponse(
            cert_chain=[leaf.pem(), *signer.served_chain_pem]
        )


class DiscoveryService(discovery_pb2_grpc.MeshDiscoveryServicer):
    def __init__(self, auth: PeerAuthenticator, mesh: MeshView, clock: Clock = utc_now) -> None:
        self.auth = auth
        self.mesh = mesh
        self.clock = clock

    async def StreamMeshState(
        self,
        request: discovery_pb2.MeshStateRequest,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[discovery_pb2.MeshState]:
        who = self.auth.authenticate(context, self.clock(), allow_token=False)
        log.info("mesh state stream opened by %s", who.caller)
        sent = request.version_info
        while True:
            state = self.mesh.state
            if state.version_info != sent:
                yield state
                sent = state.version_info
            async with self.mesh.changed:
                if self.mesh.state.version_info == sent:
                    await self.mesh.changed.wait()
