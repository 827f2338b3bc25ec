"""The demo's gRPC hop: ratings serves `meshward.demo.Ratings` (protos/meshward_demo.proto) with
grpcio, and reviews calls `GetRating` over it (the pod's sidecars carry it as HTTP/2: h2c from the
app, ALPN h2 between them).

Like the HTTP apps, the server answers with what it received: the caller's SPIFFE ID from the
`x-forwarded-client-cert` metadata its sidecar set, the trace id, every metadata entry. The client
side turns a reply or a failure into the same dict the HTTP calls give, so productpage's page shows
the gRPC hop beside the others.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import grpc

from meshward.demo.propagation import caller_identity, trace_id_of
from meshward_common.protos import meshward_demo_pb2 as pb2
from meshward_common.protos import meshward_demo_pb2_grpc as pb2_grpc

SERVICE = "meshward.demo.Ratings"
GRPC_SCHEME = "grpc://"
RATINGS = {"Reviewer1": 5, "Reviewer2": 4}
STARS = range(1, 6)
# A mesh's sidecars restart in seconds: reconnect soon after a failure, not after grpc's
# default backoff (up to 2 minutes), and never through an http_proxy from the environment.
CHANNEL_OPTIONS: Sequence[tuple[str, int]] = (
    ("grpc.enable_http_proxy", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)
# The status a failed call shows among the HTTP hops (the gRPC-HTTP mapping of grpc-gateway).
_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


def grpc_target(url: str) -> str | None:
    """`grpc://host:port` -> `host:port`; None for any other URL."""
    if not url.startswith(GRPC_SCHEME):
        return None
    return url[len(GRPC_SCHEME) :].rstrip("/")


def text_metadata(metadata: Sequence[tuple[str, str | bytes]] | None) -> dict[str, str]:
    """The text entries of gRPC metadata (binary `-bin` values left out), names lowercase."""
    return {k.lower(): v for k, v in metadata or () if isinstance(v, str)}


class RatingsService(pb2_grpc.RatingsServicer):
    def __init__(self, version: str, pod: str) -> None:
        self._version = version
        self._pod = pod
        self._ratings = dict(RATINGS)  # SetRating changes this process's copy only

    def _reply(self, product_id: int, context: grpc.aio.ServicerContext) -> pb2.RatingReply:
        received = text_metadata(context.invocation_metadata())
        identity = caller_identity(received)
        return pb2.RatingReply(
            product_id=product_id,
            ratings=self._ratings,
            service="ratings",
            version=self._version,
            pod=self._pod,
            caller=identity["caller"],
            callee=identity["callee"],
            trace_id=trace_id_of(received),
            received_metadata=received,
        )

    async def GetRating(  # the proto's method names
        self, request: pb2.GetRatingRequest, context: grpc.aio.ServicerContext
    ) -> pb2.RatingReply:
        return self._reply(request.product_id, context)

    async def SetRating(  # the proto's method names
        self, request: pb2.SetRatingRequest, context: grpc.aio.ServicerContext
    ) -> pb2.RatingReply:
        if not request.reviewer:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "reviewer: required")
        if request.stars not in STARS:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"stars: {request.stars} is not 1..5"
            )
        self._ratings[request.reviewer] = request.stars
        return self._reply(request.product_id, context)


async def start_server(host: str, port: int, version: str, pod: str) -> grpc.aio.Server:
    # grpcio sets SO_REUSEPORT by default: a second ratings on the port would bind it too and
    # take half the calls; a taken port must be an error.
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    servicer = RatingsService(version, pod)
    pb2_grpc.add_RatingsServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as exc:  # grpcio raises when the port is taken
        raise OSError(f"ratings: cannot serve gRPC on {host}:{port}: {exc}") from exc
    if not bound:
        raise OSError(f"ratings: cannot serve gRPC on {host}:{port}")
    await server.start()
    return server


def open_channel(target: str) -> grpc.aio.Channel:
    # Plaintext h2c, as every app in the mesh: the pod's sidecar adds mTLS.
    return grpc.aio.insecure_channel(target, options=list(CHANNEL_OPTIONS))


def reply_as_hop(reply: pb2.RatingReply) -> dict[str, Any]:
    """A reply in the shape of the HTTP apps' answers (status, service, identity, data, ...)."""
    return {
        "status": 200,
        "protocol": "grpc",
        "grpc_status": grpc.StatusCode.OK.name,
        "service": reply.service,
        "version": reply.version,
        "pod": reply.pod,
        "identity": {"caller": reply.caller, "callee": reply.callee},
        "trace_id": reply.trace_id,
        "received_headers": dict(reply.received_metadata),
        "data": {"id": reply.product_id, "ratings": dict(reply.ratings)},
    }


async def get_rating(
    channel: grpc.aio.Channel, product_id: int, metadata: Mapping[str, str], timeout_s: float
) -> dict[str, Any]:
    """`GetRating` with the trace metadata forwarded; a failed call becomes data, not an error."""
    stub = pb2_grpc.RatingsStub(channel)  # type: ignore[no-untyped-call]
    try:
        reply = await stub.GetRating(
            pb2.GetRatingRequest(product_id=product_id),
            metadata=tuple(metadata.items()),
            timeout=timeout_s,
        )
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
        return {
            "status": _HTTP_STATUS.get(code, 500),
            "protocol": "grpc",
            "grpc_status": code.name,
            "service": "ratings",
            "error": (exc.details() or "")[:200],
        }
    return reply_as_hop(reply)
