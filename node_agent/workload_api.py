"""The SPIFFE Workload API (X.509 part) and the mesh-state relay, as grpc.aio servicers.

Runs behind the front door (see `front_door.py`), which tells us who each connection is. The stubs
are the `spiffe` package's: the standard proto has no package, so its method paths are
`/SpiffeWorkloadAPI/...`, and generating our own copy would clash with it in one process.

Rules from the standard kept here: the `workload.spiffe.io: true` header is required
(INVALID_ARGUMENT), a caller with no identity gets PERMISSION_DENIED (never an empty message, which
would close an `X509Source` for good), every message carries the full state, and a stream gets a
new message whenever its caller's SVID rotates or the bundle changes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any, NoReturn

import grpc
from cryptography.hazmat.primitives import serialization
from spiffe._proto import workload_pb2, workload_pb2_grpc

from meshward_common.clock import Clock, utc_now
from meshward_common.errors import InvalidRequest, MeshwardError, NotReady
from meshward_common.grpc_boundary import StatusBoundary
from meshward_common.limits import MESH_STATE_MESSAGE_LIMIT
from meshward_common.protos import meshward_discovery_pb2 as mdpb
from meshward_common.protos import meshward_discovery_pb2_grpc as mdpb_grpc
from meshward_common.registry import Workload
from meshward_common.svid import der_chain
from node_agent.attestation import ProcReader, attest
from node_agent.front_door import PeerTable, caller_facts
from node_agent.metrics import AgentMetrics, Stream
from node_agent.state import AgentState, WorkloadRef, WorkloadSvid

log = logging.getLogger(__name__)

HEADER_KEY = "workload.spiffe.io"
HEADER_VALUE = "true"
REGISTRY_WAIT_SECONDS = 10.0


def bundle_key(trust_domain: str) -> str:
    """Bundles are keyed by the trust domain's SPIFFE ID (`spiffe://b.example`), as SPIRE does;
    both SPIFFE clients take that or the bare name."""
    return f"spiffe://{trust_domain}"


def federated_der(state: AgentState) -> dict[str, bytes]:
    return {bundle_key(td): der_chain(roots) for td, roots in state.federated_bundles.items()}


def x509_svid_response(
    svid: WorkloadSvid,
    bundle_der: bytes,
    now: dt.datetime,
    federated: Mapping[str, bytes] | None = None,
) -> workload_pb2.X509SVIDResponse | None:
    """The full X509SVIDResponse for one caller, or None while there is nothing valid to send.
    `federated`: the foreign trust domains' bundles (keyed by `bundle_key`)."""
    if now >= svid.not_after or not bundle_der:
        return None
    key_der = svid.key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return workload_pb2.X509SVIDResponse(
        svids=[
            workload_pb2.X509SVID(
                spiffe_id=str(svid.spiffe_id),
                x509_svid=der_chain(svid.chain),
                x509_svid_key=key_der,
                bundle=bundle_der,
            )
        ],
        federated_bundles=dict(federated or {}),
    )


class Guard:
    """Header check, then attestation of the caller by its relayed connection."""

    def __init__(self, state: AgentState, peers: PeerTable, proc: ProcReader) -> None:
        self.state = state
        self.peers = peers
        self.proc = proc

    async def caller(self, context: grpc.aio.ServicerContext[Any, Any]) -> Workload:
        _require_header(context)
        facts = caller_facts(self.peers, context.peer())
        if await self.state.wait_registry(REGISTRY_WAIT_SECONDS) is None:
            raise NotReady("registry not received from the control plane yet")
        return attest(facts, self.state.workloads_on_node(), self.proc)

    def reattest(self, context: grpc.aio.ServicerContext[Any, Any]) -> Workload:
        facts = caller_facts(self.peers, context.peer())
        return attest(facts, self.state.workloads_on_node(), self.proc)

    def source_of(self, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        """The caller as the refusal log names it: the kernel's pid and uid when known."""
        try:
            facts = caller_facts(self.peers, context.peer())
        except MeshwardError:
            return "an unattested caller"
        return f"pid {facts.pid} uid {facts.uid}"


def _require_header(context: grpc.aio.ServicerContext[Any, Any]) -> None:
    metadata = dict(context.invocation_metadata() or ())
    if metadata.get(HEADER_KEY) != HEADER_VALUE:
        raise InvalidRequest(f"security header missing from request: {HEADER_KEY}: {HEADER_VALUE}")


def new_server() -> grpc.aio.Server:
    """The internal gRPC server behind the front door (`add_servicers` adds the error boundary)."""
    return grpc.aio.server(options=[("grpc.max_send_message_length", MESH_STATE_MESSAGE_LIMIT)])


class WorkloadApiServicer(workload_pb2_grpc.SpiffeWorkloadAPIServicer):
    def __init__(
        self,
        state: AgentState,
        guard: Guard,
        ensure_svid: Callable[[WorkloadRef], None],
        clock: Clock = utc_now,
        metrics: AgentMetrics | None = None,
    ) -> None:
        self.state = state
        self.guard = guard
        self.ensure_svid = ensure_svid
        self.clock = clock
        self.metrics = metrics

    async def _identity(self, context: grpc.aio.ServicerContext[Any, Any]) -> WorkloadRef:
        workload = await self.guard.caller(context)
        return WorkloadRef.of(workload, self.state.trust_domain)

    async def FetchX509SVID(
        self, request: workload_pb2.X509SVIDRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[workload_pb2.X509SVIDResponse]:
        ref = await self._identity(context)
        self.ensure_svid(ref)
        log.info("FetchX509SVID: %s", ref)
        last: bytes | None = None
        with _counted(self.metrics, "x509_svid"):
            while True:
                version = self.state.changed.version
                svid = self.state.svid(ref)
                msg = None
                if svid is not None:
                    msg = x509_svid_response(
                        svid, der_chain(self.state.bundle), self.clock(), federated_der(self.state)
                    )
                if msg is not None:
                    data = msg.SerializeToString(deterministic=True)
                    if data != last:
                        last = data
                        yield msg
                await self.state.changed.wait_after(version)
                await self._still_same(context, ref)

    async def _still_same(
        self, context: grpc.aio.ServicerContext[Any, Any], ref: WorkloadRef
    ) -> None:
        """After a registry change, end the stream if the caller is no longer this workload."""
        now_is = WorkloadRef.of(self.guard.reattest(context), self.state.trust_domain)
        if now_is != ref:
            # The client reconnects and is attested afresh.
            raise NotReady("caller's identity changed")

    async def FetchX509Bundles(
        self, request: workload_pb2.X509BundlesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[workload_pb2.X509BundlesResponse]:
        await self._identity(context)
        last: bytes | None = None
        with _counted(self.metrics, "x509_bundles"):
            while True:
                version = self.state.changed.version
                own = der_chain(self.state.bundle)
                if own:
                    msg = workload_pb2.X509BundlesResponse(
                        bundles={
                            bundle_key(self.state.trust_domain): own,
                            **federated_der(self.state),
                        }
                    )
                    data = msg.SerializeToString(deterministic=True)
                    if data != last:
                        last = data
                        yield msg
                await self.state.changed.wait_after(version)

    async def FetchJWTSVID(
        self, request: workload_pb2.JWTSVIDRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> workload_pb2.JWTSVIDResponse:
        await _unimplemented(context)

    async def FetchJWTBundles(
        self, request: workload_pb2.JWTBundlesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[workload_pb2.JWTBundlesResponse]:
        await _unimplemented(context)
        yield workload_pb2.JWTBundlesResponse()  # pragma: no cover (makes this a generator)

    async def ValidateJWTSVID(
        self,
        request: workload_pb2.ValidateJWTSVIDRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> workload_pb2.ValidateJWTSVIDResponse:
        await _unimplemented(context)


async def _unimplemented(context: grpc.aio.ServicerContext[Any, Any]) -> NoReturn:
    _require_header(context)
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, "JWT-SVIDs are not supported yet")
    raise AssertionError("unreachable: abort raises")  # pragma: no cover


class MeshStateRelay(mdpb_grpc.MeshDiscoveryServicer):
    """The control plane's mesh state, relayed to attested workloads (full state each time)."""

    def __init__(
        self, state: AgentState, guard: Guard, metrics: AgentMetrics | None = None
    ) -> None:
        self.state = state
        self.guard = guard
        self.metrics = metrics

    async def StreamMeshState(
        self, request: mdpb.MeshStateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[mdpb.MeshState]:
        await self.guard.caller(context)
        sent = request.version_info
        with _counted(self.metrics, "mesh_state"):
            while True:
                version = self.state.changed.version
                current = self.state.mesh_state
                if current is not None and current.version_info != sent:
                    sent = current.version_info
                    yield current
                await self.state.changed.wait_after(version)


@contextlib.contextmanager
def _counted(metrics: AgentMetrics | None, stream: Stream) -> Iterator[None]:
    if metrics is not None:
        metrics.stream_opened(stream)
    try:
        yield
    finally:
        if metrics is not None:
            metrics.stream_closed(stream)


def add_servicers(server: grpc.aio.Server, api: WorkloadApiServicer, relay: MeshStateRelay) -> None:
    """Both servicers, behind the one error boundary."""
    boundary = StatusBoundary(api.guard.source_of)
    boundary.add(server, workload_pb2_grpc.add_SpiffeWorkloadAPIServicer_to_server, api)
    boundary.add(server, mdpb_grpc.add_MeshDiscoveryServicer_to_server, relay)
