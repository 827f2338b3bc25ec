"""The sidecar's live state: the current TLS material (rebuilt on every SVID rotation) and the
current mesh snapshot (replaced on every MeshState). Proxies read it per connection."""

from __future__ import annotations

import logging
from collections.abc import Callable

from meshward_common.clock import Clock, utc_now
from meshward_common.errors import NotReady
from sidecar_tls.destinations import MeshSnapshot
from sidecar_tls.identity import SvidSource, WorkloadIdentity
from sidecar_tls.tls import TlsMaterial, build_material

log = logging.getLogger(__name__)

SnapshotListener = Callable[[MeshSnapshot], None]


class SidecarState:
    def __init__(
        self,
        svids: SvidSource,
        snapshot: MeshSnapshot | None = None,
        now: Clock = utc_now,
    ) -> None:
        self.now = now
        self.svids = svids
        self._material: TlsMaterial | None = None
        self._snapshot = snapshot or MeshSnapshot()
        self._snapshot_listeners: list[SnapshotListener] = []
        self.rotations = 0
        svids.subscribe(self._on_identity)

    def _on_identity(self, identity: WorkloadIdentity) -> None:
        self._material = build_material(identity)
        self.rotations += 1
        leaf = identity.leaf
        log.info(
            "SVID %s serial %x loaded, valid until %s (generation %d)",
            identity.spiffe_id,
            leaf.serial_number,
            leaf.not_valid_after_utc.isoformat(),
            self._material.generation,
        )

    @property
    def ready(self) -> bool:
        return self._material is not None

    @property
    def material(self) -> TlsMaterial:
        if self._material is None:
            raise NotReady("sidecar has no SVID yet")
        return self._material

    @property
    def snapshot(self) -> MeshSnapshot:
        return self._snapshot

    def on_snapshot(self, listener: SnapshotListener) -> None:
        self._snapshot_listeners.append(listener)
        listener(self._snapshot)

    def set_snapshot(self, snapshot: MeshSnapshot) -> None:
        self._snapshot = snapshot
        for listener in list(self._snapshot_listeners):
            listener(snapshot)
