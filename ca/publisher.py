"""The supervisor's half of the control plane: it owns the sources of truth and publishes them.

Sources: the signing authority (self-signed root or Istio's plug-in files) and the registry and
policy files. Each new version goes into the state database (`ca.published`), where every worker
picks it up; the workers never read a source themselves, so a source is read once however many
workers there are, and they all serve the same version. The trust bundle file
(`<state-dir>/trust-bundle.pem`, what node agents bootstrap with) is written here too.
"""

from __future__ import annotations

import asyncio
import logging

from ca.authority import TRUST_BUNDLE, cert_pem, load_authority, write_public
from ca.config import CaConfig
from ca.mesh_state import POLL_INTERVAL, MeshStateSource
from ca.published import PublishedAuthority, publish_authority, publish_mesh_state
from ca.store import CaStore
from meshward_common.clock import Clock

log = logging.getLogger(__name__)


class Publisher:
    def __init__(self, config: CaConfig, store: CaStore, clock: Clock) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.mesh = MeshStateSource(
            config.registry, config.policy_dir, config.trust_domain, config.root_namespace
        )
        self.authority: PublishedAuthority | None = None

    def start(self) -> None:
        """Load every source and publish it; a bad source at start is a ConfigError."""
        cfg = self.config
        signer = load_authority(cfg.state_dir, cfg.plugin_ca_dir, cfg.trust_domain, self.clock())
        self.set_authority(PublishedAuthority(signer))
        self.mesh.load_initial()
        publish_mesh_state(self.store, self.mesh.state)

    def set_authority(self, authority: PublishedAuthority) -> None:
        self.authority = authority
        write_public(self.config.state_dir / TRUST_BUNDLE, cert_pem(*authority.roots))
        version = publish_authority(self.store, authority)
        log.info("signing authority %s published", version)

    async def run(self) -> None:
        """Follow the registry and policy files; publish each new mesh state."""
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            try:
                before = self.mesh.state.version_info
                await self.mesh.poll_once()
                if self.mesh.state.version_info != before:
                    publish_mesh_state(self.store, self.mesh.state)
            except Exception:  # a publisher that dies silently would freeze the mesh's state
                log.exception("mesh state poll failed")
