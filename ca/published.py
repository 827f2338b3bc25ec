"""What the supervisor publishes to the workers through the state database, and how workers read it.

Two snapshots, each a row of `ca.store`'s `published` table with a content version:
- `authority`: the signer (certificate, key, the path up to its root), every root of this trust
  domain in force, and the chains of earlier signers whose certificates are still valid (a node
  renewing with a node SVID an earlier signer issued must still be recognised).
- `mesh_state`: the serialized MeshState, the full state the discovery stream sends.

`Publications` is the worker's view: `refresh()` re-reads whatever changed (one cheap PRAGMA when
nothing did) and `follow()` does that every POLL_SECONDS, calling back on a new authority.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ca.issuer import SigningAuthority
from ca.store import CaStore
from meshward_common.errors import ConfigError, NotReady
from meshward_common.mesh_state import registry_from_mesh_state
from meshward_common.protos import meshward_discovery_pb2 as pb
from meshward_common.registry import Registry

log = logging.getLogger(__name__)

AUTHORITY = "authority"
MESH_STATE = "mesh_state"
# How soon a worker sees a new snapshot: well within the "seconds" a policy change may take.
POLL_SECONDS = 0.2


@dataclass(frozen=True)
class PublishedAuthority:
    """The signing authority in force, and the signing chains (without their roots) of earlier
    signers whose certificates may still be presented."""

    signer: SigningAuthority
    earlier_chains: tuple[tuple[x509.Certificate, ...], ...] = ()

    @property
    def roots(self) -> tuple[x509.Certificate, ...]:
        return self.signer.roots

    def intermediates(self) -> tuple[x509.Certificate, ...]:
        """Every signing certificate below a root that a valid certificate may chain through."""
        roots = set(self.signer.roots)
        out: list[x509.Certificate] = []
        for chain in (self.signer.served_chain, *self.earlier_chains):
            out.extend(c for c in chain if c not in roots and c not in out)
        return tuple(out)


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def encode_authority(authority: PublishedAuthority) -> bytes:
    signer = authority.signer
    doc = {
        "cert": _pem(signer.cert),
        "key": signer.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
        "parents": [_pem(c) for c in signer.parents],
        "roots": [_pem(c) for c in signer.roots],
        "earlier": [[_pem(c) for c in chain] for chain in authority.earlier_chains],
    }
    return json.dumps(doc, sort_keys=True).encode()


def _certs(pems: Sequence[str]) -> tuple[x509.Certificate, ...]:
    return tuple(x509.load_pem_x509_certificate(p.encode()) for p in pems)


def decode_authority(data: bytes) -> PublishedAuthority:
    try:
        doc = json.loads(data)
        key = serialization.load_pem_private_key(doc["key"].encode(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise ConfigError("published signing key is not EC or RSA")
        signer = SigningAuthority(
            x509.load_pem_x509_certificate(doc["cert"].encode()),
            key,
            _certs(doc["parents"]),
            _certs(doc["roots"]),
        )
        earlier = tuple(_certs(chain) for chain in doc["earlier"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"published signing authority is unreadable: {exc}") from exc
    return PublishedAuthority(signer, earlier)


def version_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def publish_authority(store: CaStore, authority: PublishedAuthority) -> str:
    data = encode_authority(authority)
    version = version_of(data)
    store.publish(AUTHORITY, version, data)
    return version


def publish_mesh_state(store: CaStore, state: pb.MeshState) -> None:
    store.publish(MESH_STATE, state.version_info, state.SerializeToString(deterministic=True))


class MeshStateView:
    """The published MeshState as the servicers read it: the state, its registry, and a
    condition notified on every new version (what `ca.mesh_state.MeshStateSource` offers)."""

    def __init__(self, trust_domain: str) -> None:
        self.trust_domain = trust_domain
        self.state = pb.MeshState(trust_domain=trust_domain)
        self.registry = Registry()
        self.changed = asyncio.Condition()

    async def set(self, state: pb.MeshState) -> None:
        self.state = state
        self.registry = registry_from_mesh_state(state)
        async with self.changed:
            self.changed.notify_all()


class Publications:
    """A worker's copy of what the supervisor published."""

    def __init__(self, store: CaStore, trust_domain: str) -> None:
        self.store = store
        self.mesh = MeshStateView(trust_domain)
        self.authority: PublishedAuthority | None = None
        self._authority_version = ""
        self._data_version: int | None = None
        self._seen_seq = -1
        self._listeners: list[Callable[[PublishedAuthority], object]] = []
        # One refresh at a time: the poll and the CSRs' catch-ups call it concurrently, and a
        # second caller must not return (seeing data_version already taken) before the first
        # has applied what it read.
        self._refreshing = asyncio.Lock()

    def on_authority(self, listener: Callable[[PublishedAuthority], object]) -> None:
        self._listeners.append(listener)

    async def refresh(self) -> None:
        """Re-read the snapshots if anything was published since the last look."""
        seq = self.store.publish_seq()
        if seq == self._seen_seq:
            return
        async with self._refreshing:
            await self._refresh()
            # Read before the refresh: a publish after it moves the count on, and the next
            # call looks again.
            self._seen_seq = max(self._seen_seq, seq)

    async def _refresh(self) -> None:
        data_version = self.store.data_version()
        if data_version == self._data_version:
            return
        self._data_version = data_version
        version = self.store.published_version(AUTHORITY)
        if version is None:
            raise NotReady("the supervisor has not published a signing authority yet")
        if version != self._authority_version:
            row = self.store.published(AUTHORITY)
            assert row is not None
            self.authority = decode_authority(row.data)
            self._authority_version = row.version
            for listener in self._listeners:
                result = listener(self.authority)
                if asyncio.iscoroutine(result):
                    await result
        version = self.store.published_version(MESH_STATE)
        if version is not None and version != self.mesh.state.version_info:
            row = self.store.published(MESH_STATE)
            assert row is not None
            state = pb.MeshState()
            state.ParseFromString(row.data)
            await self.mesh.set(state)
            log.info("mesh state version %s", state.version_info)

    async def follow(self) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            try:
                await self.refresh()
            except Exception:  # a follower that dies silently would freeze this worker's state
                log.exception("reading the published state failed")
