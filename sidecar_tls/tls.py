"""TLS for the data path: SSLContexts built from the current SVID, and the SPIFFE check of a peer.

Python's `ssl` exposes only the peer's leaf, so the SSLContext verifies the chain against the trust
bundles (hostname checking off: SPIFFE IDs are URI SANs, not DNS names) and `verify_peer_leaf` then
applies the X.509-SVID leaf rules, the validity window and the identity check to the leaf.
"""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import count

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from meshward_common.errors import PermissionDenied, SvidError, Unauthenticated
from meshward_common.spiffe_id import SpiffeId
from meshward_common.svid import leaf_problems, pem_of, spiffe_id_of
from meshward_common.tls_files import load_cert_chain_pem
from meshward_common.tls_settings import restrict_to_modern_tls
from sidecar_tls.identity import WorkloadIdentity

ALPN_HTTP = "http/1.1"
ALPN_TCP = "meshward-tcp"  # raw TCP relayed after the same identity checks (Istio: "istio")
ALPN_H2 = "h2"  # HTTP/2 (gRPC) between sidecars, one connection carrying many streams
ALPN_PROTOCOLS = (ALPN_H2, ALPN_HTTP, ALPN_TCP)

_generations = count(1)


def _base_context(purpose: ssl.Purpose, identity: WorkloadIdentity) -> ssl.SSLContext:
    ctx = ssl.SSLContext(
        ssl.PROTOCOL_TLS_CLIENT if purpose is ssl.Purpose.SERVER_AUTH else ssl.PROTOCOL_TLS_SERVER
    )
    restrict_to_modern_tls(ctx)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=pem_of(identity.all_roots()).decode())
    _load_own_svid(ctx, identity)
    return ctx


def _load_own_svid(ctx: ssl.SSLContext, identity: WorkloadIdentity) -> None:
    key_pem = identity.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    load_cert_chain_pem(ctx, pem_of(identity.chain), key_pem)


@dataclass(frozen=True, eq=False)
class TlsMaterial:
    """One generation of TLS state: rebuilt whenever the SVID rotates. Connections keep the
    generation they were opened with; new connections take the newest."""

    identity: WorkloadIdentity
    client_http: ssl.SSLContext  # offers ALPN http/1.1
    client_tcp: ssl.SSLContext  # offers ALPN meshward-tcp
    client_h2: ssl.SSLContext  # offers ALPN h2
    server: ssl.SSLContext
    generation: int
    # Computed once per generation: read on every request or connection.
    spiffe_id: str = ""
    # Trust domain -> DER of its roots: a peer's chain must end at a root of its own domain.
    bundle_roots: Mapping[str, frozenset[bytes]] = field(default_factory=dict)

    def client(self, alpn: str) -> ssl.SSLContext:
        return self.client_http if alpn == ALPN_HTTP else self.client_tcp


def build_material(identity: WorkloadIdentity) -> TlsMaterial:
    server = _base_context(ssl.Purpose.CLIENT_AUTH, identity)
    server.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    server.set_alpn_protocols(list(ALPN_PROTOCOLS))
    client_http = _base_context(ssl.Purpose.SERVER_AUTH, identity)
    client_http.set_alpn_protocols([ALPN_HTTP])
    client_tcp = _base_context(ssl.Purpose.SERVER_AUTH, identity)
    client_tcp.set_alpn_protocols([ALPN_TCP])
    client_h2 = _base_context(ssl.Purpose.SERVER_AUTH, identity)
    client_h2.set_alpn_protocols([ALPN_H2])
    return TlsMaterial(
        identity,
        client_http,
        client_tcp,
        client_h2,
        server,
        next(_generations),
        str(identity.spiffe_id),
        {
            td: frozenset(root.public_bytes(serialization.Encoding.DER) for root in roots)
            for td, roots in identity.bundles.items()
        },
    )


@dataclass(frozen=True)
class PeerCerts:
    """What a finished handshake shows of the peer: its leaf, and the root its verified chain
    ends at (DER; None when it sent no certificate)."""

    leaf: bytes | None
    anchor: bytes | None


@dataclass(frozen=True)
class PeerIdentity:
    spiffe_id: SpiffeId
    der: bytes

    @property
    def cert_sha256(self) -> str:
        return _sha256_hex(self.der)


@lru_cache(maxsize=1024)
def _sha256_hex(der: bytes) -> str:
    h = hashes.Hash(hashes.SHA256())
    h.update(der)
    return h.finalize().hex()


@lru_cache(maxsize=1024)
def _parse_leaf(der: bytes) -> tuple[SpiffeId, tuple[str, ...], dt.datetime, dt.datetime]:
    # Parsing costs more than a pooled request: cache by DER (connections repeat certificates).
    cert = x509.load_der_x509_certificate(der)
    problems = leaf_problems(cert)
    sid = spiffe_id_of(cert) if not problems else SpiffeId("invalid.local", "")
    return sid, tuple(problems), cert.not_valid_before_utc, cert.not_valid_after_utc


def verify_peer_leaf(
    peer: PeerCerts,
    bundle_roots: Mapping[str, frozenset[bytes]],
    now: dt.datetime,
    expected: Collection[str] | None = None,
) -> PeerIdentity:
    """Apply the SPIFFE rules to a peer whose chain the SSLContext already verified.

    The context trusts the roots of every trust domain it knows, so the chain it verified must
    also end at a root of the peer's own trust domain (go-spiffe's `x509svid.Verify` picks the
    bundle by the leaf's trust domain): a certificate naming trust domain B that chains to A's
    root is refused. `expected`: SPIFFE IDs the peer must have (secure naming), or None for any
    mesh identity. Raises Unauthenticated (not an SVID) or PermissionDenied (wrong identity).
    """
    der = peer.leaf
    if not der:
        raise Unauthenticated("peer presented no certificate")
    try:
        sid, problems, not_before, not_after = _parse_leaf(der)
    except (ValueError, SvidError) as exc:
        raise Unauthenticated(f"peer certificate is unreadable: {exc}") from exc
    if problems:
        raise Unauthenticated("peer certificate is not an X.509-SVID: " + "; ".join(problems))
    if now < not_before or now > not_after:
        raise Unauthenticated(f"peer certificate {sid} is outside its validity window")
    roots = bundle_roots.get(sid.trust_domain)
    if roots is None:
        raise Unauthenticated(f"peer {sid} is in trust domain {sid.trust_domain}, not trusted")
    if peer.anchor not in roots:
        raise Unauthenticated(
            f"peer {sid} does not chain to a root of trust domain {sid.trust_domain}'s bundle"
        )
    if expected is not None and str(sid) not in expected:
        raise PermissionDenied(
            f"peer presented {sid}, expected {' or '.join(sorted(expected)) or 'nothing'}"
        )
    return PeerIdentity(sid, der)
