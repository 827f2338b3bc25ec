"""The supervisor's half of the control plane: it owns the sources of truth and publishes them.

Sources: the signing authority (self-signed root or Istio's plug-in files, and a root rotation in
progress) and the registry and policy files. Each new version goes into the state database
(`ca.published`), where every worker picks it up; the workers never read a source themselves, so
a source is read once however many workers there are, and they all serve the same version. The
trust bundle goes into the mesh state too (node agents take it from there) and into
`<state-dir>/trust-bundle.pem` (what node agents bootstrap with); `<state-dir>/ca-status.json`
says who signs, which roots are trusted and where a rotation stands (no key material).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from cryptography import x509

from ca.authority import (
    PLUGIN_FILES,
    ROOT_CERT,
    ROOT_KEY,
    TRUST_BUNDLE,
    cert_pem,
    key_pem,
    load_authority,
    load_plugin_ca,
    write_private,
    write_public,
)
from ca.config import CaConfig
from ca.config_watch import ConfigSource, ConfigWatch
from ca.federation import Federation
from ca.mesh_state import POLL_INTERVAL, FileStamp, MeshStateSource, file_stamp
from ca.published import PublishedAuthority, publish_authority, publish_mesh_state
from ca.rotation import ROTATION, RootRotation, decode_rotation, encode_rotation
from ca.service_entries import ServiceEntryDir
from ca.store import CaStore
from meshward_common.clock import Clock
from meshward_common.errors import ConfigError
from meshward_common.protos import meshward_discovery_pb2 as pb
from meshward_common.svid import der_chain, fingerprint_sha256

if TYPE_CHECKING:
    from ca.kube.mesh import KubeMeshStateSource

log = logging.getLogger(__name__)

STATUS_FILE = "ca-status.json"


def _same(a: PublishedAuthority | None, b: PublishedAuthority) -> bool:
    return (
        a is not None
        and a.signer.cert == b.signer.cert
        and a.roots == b.roots
        and a.earlier_chains == b.earlier_chains
    )


class Publisher:
    def __init__(
        self, config: CaConfig, store: CaStore, clock: Clock, source: ConfigSource | None = None
    ) -> None:
        self.config = config  # as started; what changes live is in federation (config_watch)
        self.config_watch = ConfigWatch(source, config) if source is not None else None
        self.store = store
        self.clock = clock
        self.mesh = MeshStateSource(
            config.registry, config.policy_dir, config.trust_domain, config.root_namespace
        )
        self.service_entries = ServiceEntryDir(config.service_entry_dir)
        self.kube: KubeMeshStateSource | None = None  # with --kubernetes: the API's watches
        self.authority: PublishedAuthority | None = None
        self._loaded: PublishedAuthority | None = None  # from the files, without a rotation
        self.rotation: RootRotation | None = None
        self.phase = "steady"
        self._plugin_stamps: tuple[FileStamp | None, ...] = ()
        self._published = ""  # the mesh state version the workers have
        self._authority_listeners: list[Callable[[PublishedAuthority], None]] = []
        self.federation = Federation(
            config.federates_with, store, clock, self._own_roots, config.trust_domain
        )
        self.federation.on_change(self._federation_changed)

    def _own_roots(self) -> tuple[x509.Certificate, ...]:
        return self.authority.roots if self.authority is not None else ()

    def on_authority(self, listener: Callable[[PublishedAuthority], None]) -> None:
        """Called with every new signing authority (the supervisor's HTTPS ports follow it)."""
        self._authority_listeners.append(listener)

    async def start(self) -> None:
        """Load every source and publish it; a bad source at start is a ConfigError.

        On Kubernetes the mesh comes from the API's watches, and this returns once every watched
        resource has been listed, so the workers never serve a half-known mesh."""
        cfg = self.config
        signer = load_authority(cfg.state_dir, cfg.plugin_ca_dir, cfg.trust_domain, self.clock())
        self._loaded = PublishedAuthority(signer)
        if cfg.plugin_ca_dir is not None:
            self._plugin_stamps = tuple(file_stamp(cfg.plugin_ca_dir / n) for n in PLUGIN_FILES)
        self.federation.load()
        if cfg.kubernetes:
            from ca.kube.wiring import kube_mesh

            self.kube = await kube_mesh(cfg)
        else:
            self.mesh.load_initial()
            self._scan_service_entries()
        self._follow_rotation()
        if self.authority is None:
            self.set_authority(self._loaded)
        self._publish()

    def _scan_service_entries(self) -> None:
        if self.service_entries.scan():
            self.mesh.set_service_entries(
                self.service_entries.entries, str(self.config.service_entry_dir)
            )

    def _source_state(self) -> pb.MeshState:
        return self.kube.state if self.kube is not None else self.mesh.state

    def _publish(self) -> None:
        """The source's state to the workers, once per version (every path here calls this)."""
        state = self._source_state()
        if state.version_info != self._published:
            publish_mesh_state(self.store, state)
            self._published = state.version_info

    def set_authority(self, authority: PublishedAuthority) -> None:
        self.authority = authority
        write_public(self.config.state_dir / TRUST_BUNDLE, cert_pem(*authority.roots))
        self._set_trust_bundles()
        version = publish_authority(self.store, authority)
        self._write_status()
        log.info(
            "signing authority %s published: signer %s, %d root(s) in the bundle",
            version, fingerprint_sha256(authority.signer.cert)[:16], len(authority.roots),
        )  # fmt: skip
        for listener in self._authority_listeners:
            listener(authority)

    def _trust_bundles(self) -> dict[str, bytes]:
        """Each trust domain's roots, ours and every federated one, kept apart (never merged)."""
        bundles = {td: der_chain(roots) for td, roots in self.federation.bundles().items()}
        return {**bundles, self.config.trust_domain: der_chain(self._own_roots())}

    def _set_trust_bundles(self) -> bool:
        bundles = self._trust_bundles()
        changed = self.mesh.set_trust_bundles(bundles)
        if self.kube is not None:
            changed = self.kube.set_trust_bundles(bundles)
        return changed

    def _federation_changed(self) -> None:
        if self._set_trust_bundles():
            self._publish()
        self._write_status()

    async def _follow_config(self) -> None:
        """A changed config file: its federation relationships put in force (read in a thread,
        as the registry and policy files are), or one line and the last good ones kept."""
        watch = self.config_watch
        if watch is None or not watch.changed():
            return
        try:
            new = await asyncio.to_thread(watch.source.load)
            applied = self.federation.apply(new.federates_with)
        except ConfigError as exc:
            watch.refused(exc)
        else:
            watch.took(new, applied)
        self._write_status()

    def _watch_plugin_files(self) -> None:
        """A changed, complete and consistent set of plug-in files starts a rotation to it (with
        no grace when only the intermediate changed: its root is trusted already)."""
        plugin_dir = self.config.plugin_ca_dir
        assert plugin_dir is not None
        stamps = tuple(file_stamp(plugin_dir / name) for name in PLUGIN_FILES)
        if stamps == self._plugin_stamps:
            return
        if self.store.published(ROTATION) is not None:
            return  # one rotation at a time: the new files are taken once this one is done
        try:
            new = load_plugin_ca(plugin_dir, self.clock())
        except ConfigError as exc:
            self._plugin_stamps = stamps  # one line per change, not per poll
            log.error("plug-in CA files refused, the CA keeps signing as before: %s", exc)
            return
        self._plugin_stamps = stamps
        assert self._loaded is not None
        old = self._loaded.signer
        if new.cert == old.cert and new.roots == old.roots:
            return
        grace = (
            dt.timedelta(0) if set(new.roots) <= set(old.roots) else self.config.root_rotation_grace
        )
        rotation = RootRotation(old, new, self.clock(), grace)
        self.store.publish(ROTATION, fingerprint_sha256(new.cert)[:16], encode_rotation(rotation))
        self._loaded = PublishedAuthority(new)
        log.info("plug-in CA files changed: rotating to %s", new.cert.subject.rfc4514_string())

    def _follow_rotation(self) -> None:
        """Apply the recorded root rotation's schedule."""
        if self.config.plugin_ca_dir is not None:
            self._watch_plugin_files()
        row = self.store.published(ROTATION)
        if row is None:
            self.rotation, self.phase = None, "steady"
            return
        rotation = self.rotation = decode_rotation(row.data)
        now, max_ttl = self.clock(), self.config.max_ttl
        phase = rotation.phase(now, max_ttl)
        if phase != self.phase:
            log.info("root rotation: %s (switch at %s, old root leaves at %s)", phase,
                     rotation.switch_at.isoformat(), rotation.retire_at(max_ttl).isoformat())  # fmt: skip
        self.phase = phase
        wanted = PublishedAuthority(
            rotation.authority(now, max_ttl), rotation.earlier_chains(now, max_ttl)
        )
        if phase != "prepared" and self.config.plugin_ca_dir is None:
            # The new root signs from now on: a restart must load it as the signer.
            self._write_root(rotation.new.cert, rotation)
        if not _same(self.authority, wanted):
            self.set_authority(wanted)
        if phase == "done":
            self.store.unpublish(ROTATION)
            self.rotation, self.phase = None, "steady"
            self._write_status()

    def _write_root(self, cert: x509.Certificate, rotation: RootRotation) -> None:
        path = self.config.state_dir / ROOT_CERT
        if path.read_bytes() != cert_pem(cert):
            write_private(self.config.state_dir / ROOT_KEY, key_pem(rotation.new.key))
            write_public(path, cert_pem(cert))

    def _write_status(self) -> None:
        authority = self.authority
        if authority is None:
            return
        status: dict[str, object] = {
            "trust_domain": self.config.trust_domain,
            "signer": _cert_info(authority.signer.cert),
            "roots": [_cert_info(c) for c in authority.roots],
            "rotation": None,
            "federation": dict(self.federation.status()),
            "config": self.config_watch.status() if self.config_watch is not None else None,
        }
        if self.rotation is not None:
            status["rotation"] = {
                "phase": self.phase,
                "started": self.rotation.started.isoformat(),
                "switch_at": self.rotation.switch_at.isoformat(),
                "retire_at": self.rotation.retire_at(self.config.max_ttl).isoformat(),
                "old_root": fingerprint_sha256(self.rotation.old.roots[-1]),
                "new_root": fingerprint_sha256(self.rotation.new.roots[-1]),
            }
        write_public(self.config.state_dir / STATUS_FILE, json.dumps(status, indent=1).encode())

    async def run(self) -> None:
        """Follow the registry and policy files (or the API), the config file, the rotation
        schedule and the federated bundle endpoints; publish each change."""
        source = self._poll() if self.kube is None else self._run_kube(self.kube)
        await asyncio.gather(source, self.federation.run())

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            try:
                await self._follow_config()
                self._follow_rotation()
                await self.mesh.poll_once()
                self._scan_service_entries()
                self._publish()
            except Exception:  # a publisher that dies silently would freeze the mesh's state
                log.exception("publishing the control plane's state failed")

    async def _run_kube(self, kube: KubeMeshStateSource) -> None:
        watching = asyncio.create_task(kube.watch(), name="kubernetes mesh state")
        try:
            while True:
                async with kube.changed:
                    # Woken by the watches; the timeout keeps the rotation schedule followed.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(kube.changed.wait(), POLL_INTERVAL)
                try:
                    await self._follow_config()
                    self._follow_rotation()
                    self._publish()
                except Exception:  # a publisher that dies silently would freeze the mesh
                    log.exception("publishing the control plane's state failed")
        finally:
            watching.cancel()
            await kube.stop()


def _cert_info(cert: x509.Certificate) -> dict[str, str]:
    return {
        "sha256": fingerprint_sha256(cert),
        "subject": cert.subject.rfc4514_string(),
        "not_after": cert.not_valid_after_utc.isoformat(),
    }
