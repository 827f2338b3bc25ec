"""The agent's side of the front door (`meshward_common.front_door`): the Workload API's Unix socket.

Why a front door: grpcio never shows a servicer the peer's credentials (`context.peer()` is just
"unix:"), so identity cannot be established inside the gRPC server. The alternative, one socket per
pod reachable only from that pod, needs a mount per pod and breaks as soon as two pods share a
filesystem view (here they all share the host's). So the agent owns the public socket: for every
accepted connection the door reads the kernel's facts (SO_PEERCRED, SO_PEERPIDFD, /proc) once, and
the servicer looks its caller up by the relayed connection's port (`caller_facts`); a port the
door does not know (say, a host process dialing the internal port directly) gets
PERMISSION_DENIED. A connection whose attestation failed is still relayed, registered as
`Unattested`, so the client receives a proper PERMISSION_DENIED status instead of a dropped
connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from meshward_common import front_door
from meshward_common.errors import ConfigError, PermissionDenied
from node_agent.attestation import PeerFacts, ProcReader, attest_socket

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Unattested:
    """A caller whose kernel facts could not be read (it exited, or /proc refused)."""

    reason: str


PeerTable = front_door.PeerTable[PeerFacts | Unattested]


def caller_facts(peers: PeerTable, grpc_peer: str) -> PeerFacts:
    """The attested facts of a gRPC caller (`context.peer()`), or PERMISSION_DENIED: a caller
    the Workload API cannot name has no identity to receive (SPIFFE's Workload API answer)."""
    found = peers.lookup(grpc_peer)
    if found is None:
        raise PermissionDenied(f"caller {grpc_peer} did not come through the Workload API socket")
    if isinstance(found, Unattested):
        raise PermissionDenied("caller could not be attested (see the agent log)")
    return found


def prepare_socket_path(path: Path) -> None:
    """Make the socket's directory; refuse a path another live process is serving on."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"socket directory {path.parent}: cannot create: {exc.strerror}") from exc
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_socket():
        raise ConfigError(
            f"socket path {path} exists and is not a socket; remove it or pick another"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()  # stale: left by an agent that died without cleaning up
        return
    finally:
        probe.close()
    raise ConfigError(f"socket path {path} is in use by another process (another agent running?)")


class FrontDoor:
    def __init__(
        self,
        socket_path: Path,
        upstream_port: int,
        peers: PeerTable,
        proc: ProcReader | None = None,
    ) -> None:
        self.socket_path = socket_path
        self.proc = proc or ProcReader()
        self.door = front_door.FrontDoor(
            upstream_port, self._attest, peers=peers, name="Workload API"
        )

    @property
    def peers(self) -> PeerTable:
        return self.door.peers

    def _attest(self, transport: asyncio.BaseTransport) -> PeerFacts | Unattested:
        try:
            return attest_socket(transport.get_extra_info("socket"), self.proc)
        except (PermissionDenied, OSError) as exc:
            log.info("caller not attested: %s", exc)
            return Unattested(str(exc))

    async def start(self) -> None:
        prepare_socket_path(self.socket_path)
        await self.door.start_unix(str(self.socket_path))
        # Any local uid may connect (sidecars run as 1337, apps as others): attestation, not file
        # permissions, decides what a caller gets.
        os.chmod(self.socket_path, 0o777)  # noqa: S103

    async def stop(self) -> None:
        await self.door.close()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
