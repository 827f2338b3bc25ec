"""The mesh's state as the control plane serves it: registry + policy files, versioned.

`build_mesh_state` is pure. `MeshStateSource` polls the files (every 0.25 s: changes reach
subscribers well within a second), keeps the last good registry and the last good version of each
policy file when a new one is bad (one log line with file:line), and wakes subscribers on change.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from meshward_common.errors import ConfigError
from meshward_common.protos import meshward_discovery_pb2 as pb
from meshward_common.registry import Registry, load_registry
from policy import parse_text
from policy.model import DEFAULT_ROOT_NAMESPACE

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.25


def build_mesh_state(
    registry: Registry,
    policies: Mapping[str, str],
    trust_domain: str,
    root_namespace: str,
    trust_bundles: Mapping[str, bytes] | None = None,
) -> pb.MeshState:
    """The full MeshState; version_info is a digest of the content, so it changes iff it does."""
    workloads = []
    for w in registry.workloads:
        workloads.append(
            pb.Workload(
                name=w.name,
                namespace=w.namespace,
                service_account=w.service_account,
                node=w.node,
                labels=dict(w.labels),
                address=w.address,
                service=w.service,
                ports=list(w.ports),
                spiffe_id=str(w.spiffe_id(trust_domain)),
                netns=w.selector.netns if w.selector else "",
                uids=list(w.selector.uids) if w.selector else [],
                pod_uid=w.pod_uid,
                sidecar_container_id=w.sidecar_container_id,
            )
        )
    state = pb.MeshState(
        trust_domain=trust_domain,
        workloads=workloads,
        policies=[pb.PolicyDocument(source=s, yaml=policies[s]) for s in sorted(policies)],
        root_namespace=root_namespace,
        trust_bundles=dict(trust_bundles or {}),
    )
    digest = hashlib.sha256(state.SerializeToString(deterministic=True)).hexdigest()
    state.version_info = digest[:16]
    return state


@dataclass(frozen=True)
class _Stamp:
    mtime_ns: int
    size: int
    inode: int


def _stamp(path: Path) -> _Stamp | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return _Stamp(st.st_mtime_ns, st.st_size, st.st_ino)


class MeshStateSource:
    """Holds the current registry and MeshState; `changed` wakes waiters on every new version."""

    def __init__(
        self,
        registry_path: Path | None,
        policy_dir: Path | None,
        trust_domain: str,
        root_namespace: str = DEFAULT_ROOT_NAMESPACE,
    ) -> None:
        self.registry_path = registry_path
        self.policy_dir = policy_dir
        self.trust_domain = trust_domain
        self.root_namespace = root_namespace
        self.registry = Registry()
        self._policies: dict[str, str] = {}
        self._bundles: dict[str, bytes] = {}
        self._stamps: dict[Path, _Stamp | None] = {}
        self.changed = asyncio.Condition()
        self.state = build_mesh_state(self.registry, {}, trust_domain, root_namespace)

    def load_initial(self) -> None:
        """First load: a bad registry at startup is a ConfigError (nothing good to keep)."""
        if self.registry_path is not None:
            self.registry = self._checked(load_registry(self.registry_path))
            self._stamps[self.registry_path] = _stamp(self.registry_path)
        self._scan_policies()
        self._rebuild()

    def _checked(self, registry: Registry) -> Registry:
        if registry.trust_domain and registry.trust_domain != self.trust_domain:
            raise ConfigError(
                f"{self.registry_path}: trustDomain {registry.trust_domain!r} does not match the "
                f"CA's {self.trust_domain!r}"
            )
        return registry

    def _policy_files(self) -> list[Path]:
        if self.policy_dir is None:
            return []
        try:
            return sorted(
                p
                for p in self.policy_dir.iterdir()
                if p.suffix in (".yaml", ".yml") and p.is_file()
            )
        except OSError as exc:
            log.error("%s: cannot list policy directory: %s", self.policy_dir, exc.strerror)
            return []

    def _scan_policies(self) -> bool:
        """Re-read changed policy files; True if the served set changed."""
        changed = False
        files = self._policy_files()
        names = {p.name for p in files}
        for gone in [n for n in self._policies if n not in names]:
            del self._policies[gone]
            changed = True
        for path in files:
            stamp = _stamp(path)
            if path in self._stamps and self._stamps[path] == stamp:
                continue
            self._stamps[path] = stamp
            try:
                text = path.read_text()
                parse_text(text, str(path))
            except ConfigError as exc:
                log.error("policy refused, keeping the last good version: %s", exc)
                continue
            except OSError as exc:
                log.error("%s: cannot read policy: %s", path, exc.strerror)
                continue
            if self._policies.get(path.name) != text:
                self._policies[path.name] = text
                changed = True
        return changed

    def _scan_registry(self) -> bool:
        if self.registry_path is None:
            return False
        stamp = _stamp(self.registry_path)
        if stamp == self._stamps.get(self.registry_path):
            return False
        self._stamps[self.registry_path] = stamp
        try:
            registry = self._checked(load_registry(self.registry_path))
        except ConfigError as exc:
            log.error("registry refused, keeping the last good one: %s", exc)
            return False
        if registry == self.registry:
            return False
        self.registry = registry
        log.info("registry reloaded: %d workloads", len(registry.workloads))
        return True

    def set_trust_bundles(self, bundles: Mapping[str, bytes]) -> bool:
        """New trust bundles (a root rotation); True if the served state changed."""
        if dict(bundles) == self._bundles:
            return False
        self._bundles = dict(bundles)
        self._rebuild()
        return True

    def _rebuild(self) -> None:
        self.state = build_mesh_state(
            self.registry, self._policies, self.trust_domain, self.root_namespace, self._bundles
        )

    async def poll_once(self) -> None:
        reg = self._scan_registry()
        pol = self._scan_policies()
        if reg or pol:
            old = self.state.version_info
            self._rebuild()
            if self.state.version_info != old:
                log.info("mesh state version %s", self.state.version_info)
                async with self.changed:
                    self.changed.notify_all()

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            try:
                await self.poll_once()
            except Exception:  # a watcher that dies silently would freeze the mesh's state
                log.exception("mesh state poll failed")
