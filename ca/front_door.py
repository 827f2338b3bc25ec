"""The control plane's side of the front door (`meshward_common.front_door`): TLS on 15012.

grpcio's Python server can either require a client certificate or never ask for one; the CA needs
both on one port (join-token bootstrap has no certificate, renewal and discovery use the node SVID).
So TLS ends in the front door, with the client certificate requested and verified against the trust
bundle when sent (`CERT_OPTIONAL`); what the handshake proved is a `PeerInfo`, which the servicers
look up by `context.peer()`. A connection to the internal port that did not come through the door
has no entry and is refused.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

from meshward_common.front_door import FrontDoor, PeerTable
from meshward_common.tls_files import load_cert_chain_pem
from meshward_common.tls_settings import restrict_to_modern_tls


@dataclass(frozen=True)
class PeerInfo:
    """What the TLS handshake proved: the client's leaf certificate (DER), if it sent one."""

    cert_der: bytes | None
    remote: str


CaFrontDoor = FrontDoor[PeerInfo]
CaPeerTable = PeerTable[PeerInfo]


def peer_info(transport: asyncio.BaseTransport) -> PeerInfo:
    """The front door's `identify` for the CA: the verified client leaf and the remote address."""
    sslobj = transport.get_extra_info("ssl_object")
    cert = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
    peername = transport.get_extra_info("peername")
    remote = f"{peername[0]}:{peername[1]}" if peername else "?"
    return PeerInfo(cert, remote)


def server_ssl_context(chain_pem: bytes, key_pem: bytes, bundle_pem: str) -> ssl.SSLContext:
    """TLS 1.2+ with AEAD suites only (as the sidecars), ALPN h2, client certificate requested and
    verified against the bundle if sent."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    restrict_to_modern_tls(ctx)
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    load_cert_chain_pem(ctx, chain_pem, key_pem)
    ctx.load_verify_locations(cadata=bundle_pem)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.set_alpn_protocols(["h2"])  # gRPC clients insist on h2
    return ctx
