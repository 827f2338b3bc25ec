"""The mesh state stream from the node agent: `meshward.v1.MeshDiscovery/StreamMeshState` on the
Workload API socket. Every message is the full state; on failure, reconnect with backoff and keep
serving with the last state received."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import grpc

from meshward_common.protos import meshward_discovery_pb2 as pb
from meshward_common.protos import meshward_discovery_pb2_grpc as pb_grpc
from sidecar_tls.destinations import MeshSnapshot, snapshot_from_proto

log = logging.getLogger(__name__)

WORKLOAD_API_METADATA = (("workload.spiffe.io", "true"),)


async def follow_mesh_state(
    socket_path: str,
    on_snapshot: Callable[[MeshSnapshot], None],
    *,
    initial_backoff: float = 0.2,
    max_backoff: float = 5.0,
) -> None:
    """Run forever (until cancelled), calling `on_snapshot` with every state received."""
    target = socket_path if socket_path.startswith("unix:") else "unix:" + socket_path
    backoff = initial_backoff
    version = ""
    while True:
        try:
            async with grpc.aio.insecure_channel(target) as channel:
                stub = pb_grpc.MeshDiscoveryStub(channel)  # type: ignore[no-untyped-call]
                call = stub.StreamMeshState(
                    pb.MeshStateRequest(version_info=version), metadata=WORKLOAD_API_METADATA
                )
                async for state in call:
                    snapshot = snapshot_from_proto(state)
                    version = snapshot.version
                    backoff = initial_backoff
                    log.info(
                        "mesh state %s: %d workloads, %d policies",
                        version,
                        len(snapshot.workloads),
                        len(snapshot.policies),
                    )
                    on_snapshot(snapshot)
            log.warning("mesh state stream ended; reconnecting")
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as exc:
            log.warning(
                "mesh state stream from %s failed: %s %s; retrying in %.1fs",
                target,
                exc.code().name,
                exc.details(),
                backoff,
            )
        except Exception as exc:
            log.warning("mesh state stream from %s failed: %s; retrying", target, exc)
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, max_backoff)
