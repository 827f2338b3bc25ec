"""Pooled mTLS connections to peer sidecars, keyed by destination address.

A connection is checked once, at its handshake: the chain by the SSLContext, then the SPIFFE rules
and the expected identity (secure naming) before any request byte is sent. A pooled connection is
reused only while its peer is still expected and its TLS generation is the current one (after a
rotation, new requests go out with the new certificate; requests in flight finish on the old).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from sidecar_tls.destinations import Destination
from sidecar_tls.http1.upstream import TlsUpstreamLink, UpstreamLink
from sidecar_tls.http2.connection import H2Side, TlsH2Side
from sidecar_tls.http2.upstreams import H2Upstreams
from sidecar_tls.proxy.net import (
    P,
    Streams,
    close,
    connect,
    open_protocol,
    peer_certs,
    selected_alpn,
)
from sidecar_tls.state import SidecarState
from sidecar_tls.tls import ALPN_H2, ALPN_HTTP, PeerIdentity, verify_peer_leaf

log = logging.getLogger(__name__)

CONNECT_SECONDS: Final = 10.0


@dataclass(eq=False)
class Upstream:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    peer: PeerIdentity
    generation: int

    @property
    def streams(self) -> Streams:
        return self.reader, self.writer


class ConnectionPool:
    def __init__(self, state: SidecarState, max_idle_per_destination: int = 128) -> None:
        self._state = state
        self._links: dict[tuple[str, int], list[UpstreamLink]] = {}
        self._max_idle = max_idle_per_destination
        self._h2: dict[tuple[str, int], H2Upstreams] = {}
        self.handshakes = 0

    async def open(self, dest: Destination, alpn: str) -> Upstream:
        """A new mTLS connection as streams (raw TCP relays; never pooled), checked like a link."""
        material = self._state.material
        sni = dest.service if "." in dest.service and ":" not in dest.service else None
        reader, writer = await connect(
            dest.ip, dest.port, ssl_context=material.client(alpn), server_hostname=sni or ""
        )
        self.handshakes += 1
        try:
            peer = verify_peer_leaf(
                peer_certs(writer),
                material.bundle_roots,
                self._state.now(),
                dest.expected_ids,
            )
        except Exception:
            close(writer)
            raise
        return Upstream(reader, writer, peer, material.generation)

    # HTTP: callback-based links (the hot path)

    def take_link(self, dest: Destination) -> UpstreamLink | None:
        """An idle verified connection to `dest`, or None."""
        idle = self._links.get((dest.ip, dest.port))
        while idle:
            link = idle.pop()
            if self.fits(dest, link):
                return link
            link.close()
        return None

    def fits(self, dest: Destination, link: UpstreamLink) -> bool:
        """Whether an idle link may carry another request to `dest`: open, made with the current
        certificate, and its server still one `dest` expects (secure naming)."""
        return (
            link.usable()
            and link.generation == self._state.material.generation
            and link.peer_id in dest.expected_ids
        )

    async def open_link(self, dest: Destination) -> UpstreamLink:
        """A new mTLS connection whose server passed every check; raises on any refusal."""
        material = self._state.material
        link = await self._open_verified(dest, TlsUpstreamLink, material.client_http, ALPN_HTTP)
        link.generation = material.generation
        return link

    async def _open_verified(
        self, dest: Destination, factory: Callable[[], P], context: ssl.SSLContext, alpn: str
    ) -> P:
        """A protocol on a new mTLS connection to `dest` whose server passed every check (the
        chain, the SPIFFE rules, the expected identity) and agreed to `alpn`; its `peer_id` set."""
        material = self._state.material
        sni = dest.service if "." in dest.service and ":" not in dest.service else ""
        transport, protocol = await open_protocol(
            factory,
            dest.ip,
            dest.port,
            CONNECT_SECONDS,
            ssl=context,
            server_hostname=sni,
            ssl_handshake_timeout=CONNECT_SECONDS,
        )
        self.handshakes += 1
        try:
            peer = verify_peer_leaf(
                peer_certs(transport),
                material.bundle_roots,
                self._state.now(),
                dest.expected_ids,
            )
            agreed = selected_alpn(transport)
            if agreed != alpn and not (agreed is None and alpn == ALPN_HTTP):  # the default
                raise ConnectionRefusedError(f"peer at {dest.address} does not speak {alpn}")
        except Exception:
            transport.close()
            raise
        protocol.peer_id = str(peer.spiffe_id)  # type: ignore[attr-defined]
        return protocol

    # HTTP/2: one connection per destination carries many streams

    def h2_upstreams(self, dest: Destination) -> H2Upstreams:
        key = (dest.ip, dest.port)
        upstreams = self._h2.get(key)
        if upstreams is None:
            upstreams = self._h2[key] = H2Upstreams(lambda: self._open_h2(dest))
        return upstreams

    def h2_fits(self, dest: Destination, side: H2Side) -> bool:
        """As `fits`: a connection takes new streams while made with the current certificate and
        its server is one `dest` expects."""
        return side.generation == self._state.material.generation and side.peer_id in (
            dest.expected_ids
        )

    async def _open_h2(self, dest: Destination) -> H2Side:
        material = self._state.material
        side = await self._open_verified(
            dest, lambda: TlsH2Side(client_side=True), material.client_h2, ALPN_H2
        )
        side.generation = material.generation
        return side

    def release_link(self, dest: Destination, link: UpstreamLink) -> None:
        idle = self._links.setdefault((dest.ip, dest.port), [])
        if link.usable() and len(idle) < self._max_idle:
            idle.append(link)
        else:
            link.close()

    def idle(self) -> int:
        """How many verified connections wait in the pool."""
        return sum(len(links) for links in self._links.values())

    def close_all(self) -> None:
        for links in self._links.values():
            for link in links:
                link.close()
        self._links.clear()
        for upstreams in self._h2.values():
            upstreams.close_all()
        self._h2.clear()
