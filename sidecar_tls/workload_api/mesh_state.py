"""The mesh state stream from the node agent: `meshward.v1.MeshDiscovery/StreamMeshState` on the
Workload API socket. Every message is the full state; on failure, reconnect with backoff and keep
serving with the last state received.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from google.protobuf.message import DecodeError

from meshward_common.errors import MeshwardError
from meshward_common.protos import meshward_discovery_pb2 as pb
from sidecar_tls.destinations import MeshSnapshot, snapshot_from_proto
from sidecar_tls.workload_api.grpc_stream import WORKLOAD_API_METADATA, follow_stream

log = logging.getLogger(__name__)

STREAM_MESH_STATE = "/meshward.v1.MeshDiscovery/StreamMeshState"


async def follow_mesh_state(
    socket_path: str,
    on_snapshot: Callable[[MeshSnapshot], None],
    *,
    initial_backoff: float = 0.2,
    max_backoff: float = 5.0,
) -> None:
    """Run forever (until cancelled), calling `on_snapshot` with every state received; a message
    that does not parse is logged and skipped (the last state stays)."""
    version = ""

    def request() -> bytes:  # resend the last version seen: the agent then sends only changes
        return pb.MeshStateRequest(version_info=version).SerializeToString()

    def on_message(message: bytes) -> None:
        nonlocal version
        try:
            snapshot = snapshot_from_proto(pb.MeshState.FromString(message))
        except (MeshwardError, DecodeError) as exc:
            log.error("mesh state message unusable, keeping version %r: %s", version, exc)
            return
        version = snapshot.version
        log.info(
            "mesh state %s: %d workloads, %d policies",
            version,
            len(snapshot.workloads),
            len(snapshot.policies),
        )
        on_snapshot(snapshot)

    await follow_stream(
        socket_path,
        STREAM_MESH_STATE,
        request,
        on_message,
        WORKLOAD_API_METADATA,
        what="mesh state",
        initial_backoff=initial_backoff,
        max_backoff=max_backoff,
    )
