"""Pooled mTLS connections to peer sidecars, keyed by destination address.

A connection is checked once, at its handshake: the chain by the SSLContext, then the SPIFFE rules
and the expected identity (secure naming) before any request byte is sent. A pooled connection is
reused only while its peer is still expected and its TLS generation is the current one (after a
rotation, new requests go out with the new certificate; requests in flight finish on the old).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from sidecar_tls.destinations import Destination
from sidecar_tls.net import Streams, close, connect, peer_leaf_der
from sidecar_tls.state import SidecarState
from sidecar_tls.tls import ALPN_HTTP, PeerIdentity, verify_peer_leaf

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Upstream:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    peer: PeerIdentity
    generation: int

    @property
    def streams(self) -> Streams:
        return self.reader, self.writer

    def usable(self, dest: Destination, generation: int) -> bool:
        return (
            self.generation == generation
            and str(self.peer.spiffe_id) in dest.expected_ids
            and not self.reader.at_eof()
            and not self.writer.is_closing()
        )


class ConnectionPool:
    def __init__(self, state: SidecarState, max_idle_per_destination: int = 128) -> None:
        self._state = state
        self._idle: dict[tuple[str, int], list[Upstream]] = {}
        self._max_idle = max_idle_per_destination
        self.handshakes = 0

    async def acquire(self, dest: Destination) -> tuple[Upstream, bool]:
        """(connection, reused): an idle pooled connection, or a new verified one."""
        generation = self._state.material.generation
        idle = self._idle.get((dest.ip, dest.port))
        while idle:
            up = idle.pop()
            if up.usable(dest, generation):
                return up, True
            close(up.writer)
        return await self.open(dest, ALPN_HTTP), False

    def release(self, dest: Destination, up: Upstream) -> None:
        idle = self._idle.setdefault((dest.ip, dest.port), [])
        if len(idle) < self._max_idle and not up.writer.is_closing():
            idle.append(up)
        else:
            close(up.writer)

    async def open(self, dest: Destination, alpn: str) -> Upstream:
        """A new mTLS connection whose server passed every check; raises on any refusal."""
        material = self._state.material
        sni = dest.service if "." in dest.service and ":" not in dest.service else None
        reader, writer = await connect(
            dest.ip, dest.port, ssl_context=material.client(alpn), server_hostname=sni or ""
        )
        self.handshakes += 1
        try:
            peer = verify_peer_leaf(
                peer_leaf_der(writer),
                material.trust_domains,
                self._state.now(),
                dest.expected_ids,
            )
        except Exception:
            close(writer)
            raise
        return Upstream(reader, writer, peer, material.generation)

    def close_all(self) -> None:
        for idle in self._idle.values():
            for up in idle:
                close(up.writer)
        self._idle.clear()
