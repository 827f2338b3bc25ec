"""What the agent holds in memory and serves: the trust bundle, workload SVIDs, the mesh state.

Every change bumps one version and wakes every waiting stream; each stream then recomputes its
caller's full state and sends it only if it differs from what it sent last. One notifier instead of
per-identity channels keeps the fan-out trivially correct (a bundle change reaches every stream).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from meshward_common import registry
from meshward_common.mesh_state import registry_from_mesh_state
from meshward_common.protos import meshward_discovery_pb2 as mdpb
from meshward_common.spiffe_id import SpiffeId
from meshward_common.svid import fingerprint_sha256


@dataclass(frozen=True, order=True)
class WorkloadRef:
    """One registered workload and the identity it holds: the unit that gets its own key.

    Two pods with the same service account share an identity but never a key."""

    workload: str  # "<namespace>/<name>"
    spiffe_id: SpiffeId

    @classmethod
    def of(cls, workload: registry.Workload, trust_domain: str) -> WorkloadRef:
        return cls(f"{workload.namespace}/{workload.name}", workload.spiffe_id(trust_domain))

    def __str__(self) -> str:
        return f"{self.workload} ({self.spiffe_id})"


@dataclass(frozen=True)
class WorkloadSvid:
    """One workload's SVID; the key exists only in memory and only here."""

    spiffe_id: SpiffeId
    chain: tuple[x509.Certificate, ...]  # leaf first, without the root
    key: ec.EllipticCurvePrivateKey = field(repr=False)

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def not_after(self) -> dt.datetime:
        return self.leaf.not_valid_after_utc

    @property
    def not_before(self) -> dt.datetime:
        return self.leaf.not_valid_before_utc


class Notifier:
    def __init__(self) -> None:
        self.version = 0
        self._event = asyncio.Event()

    def bump(self) -> None:
        self.version += 1
        self._event.set()
        self._event = asyncio.Event()

    async def wait_after(self, version: int) -> int:
        while self.version == version:
            await self._event.wait()
        return self.version


class AgentState:
    def __init__(self, node: str) -> None:
        self.node = node
        self.changed = Notifier()
        self._bundle: tuple[x509.Certificate, ...] = ()
        self._federated: dict[str, tuple[x509.Certificate, ...]] = {}
        self._svids: dict[WorkloadRef, WorkloadSvid] = {}
        self.registry: registry.Registry | None = None
        self.mesh_state: mdpb.MeshState | None = None
        self.trust_domain = ""
        self._registry_ready = asyncio.Event()

    # -- trust bundle -------------------------------------------------------------------------
    @property
    def bundle(self) -> tuple[x509.Certificate, ...]:
        return self._bundle

    @property
    def federated_bundles(self) -> Mapping[str, tuple[x509.Certificate, ...]]:
        """Foreign trust domain -> its roots (SPIFFE federation), each kept apart."""
        return self._federated

    def set_bundle(
        self,
        roots: Sequence[x509.Certificate],
        federated: Mapping[str, Sequence[x509.Certificate]] | None = None,
    ) -> bool:
        """Replace the bundle (and, when given, the federated bundles); True if either changed.
        The only way roots enter: called with the operator's files at start and with the control
        plane's bundles from the authenticated discovery stream, never with roots a certificate
        answer carries."""
        new = _dedupe(roots)
        new_federated = (
            self._federated
            if federated is None
            else {td: _dedupe(certs) for td, certs in sorted(federated.items())}
        )
        if _fingerprints(new) == _fingerprints(self._bundle) and {
            td: _fingerprints(c) for td, c in new_federated.items()
        } == {td: _fingerprints(c) for td, c in self._federated.items()}:
            return False
        self._bundle = new
        self._federated = new_federated
        self.changed.bump()
        return True

    # -- workload SVIDs -----------------------------------------------------------------------
    def svid(self, ref: WorkloadRef) -> WorkloadSvid | None:
        return self._svids.get(ref)

    def put_svid(self, ref: WorkloadRef, svid: WorkloadSvid) -> None:
        self._svids[ref] = svid
        self.changed.bump()

    def drop_svid(self, ref: WorkloadRef) -> None:
        if self._svids.pop(ref, None) is not None:
            self.changed.bump()

    # -- mesh state (registry + policies) -----------------------------------------------------
    def set_mesh_state(self, state: mdpb.MeshState) -> None:
        self.mesh_state = state
        self.registry = registry_from_mesh_state(state)
        if state.trust_domain:
            self.trust_domain = state.trust_domain
        self._registry_ready.set()
        self.changed.bump()

    async def wait_registry(self, wait: float) -> registry.Registry | None:
        if self.registry is None:
            try:
                await asyncio.wait_for(self._registry_ready.wait(), wait)
            except TimeoutError:
                return None
        return self.registry

    def workloads_on_node(self) -> tuple[registry.Workload, ...]:
        return () if self.registry is None else self.registry.on_node(self.node)


def _fingerprints(certs: Sequence[x509.Certificate]) -> list[str]:
    return [fingerprint_sha256(c) for c in certs]


def _dedupe(certs: Sequence[x509.Certificate]) -> tuple[x509.Certificate, ...]:
    seen: set[str] = set()
    out: list[x509.Certificate] = []
    for cert in certs:
        fp = fingerprint_sha256(cert)
        if fp not in seen:
            seen.add(fp)
            out.append(cert)
    return tuple(out)
