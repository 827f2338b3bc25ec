"""The mesh's state as the control plane serves it: registry + policy files, versioned.

`build_mesh_state` is pure. `MeshStateSource` polls the files (every 0.25 s: changes reach
subscribers well within a second), keeps the last good registry and the last good version of each
policy file when a new one is bad (one log line with file:line), and wakes subscribers on change.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from meshward_common.errors import ConfigError
from meshward_common.limits import MESH_STATE_MAX_BYTES
from meshward_common.protos import meshward_discovery_pb2 as pb
from meshward_common.registry import Registry, load_registry
from meshward_common.service_entry import ServiceEntry
from policy import parse_text
from policy.model import DEFAULT_ROOT_NAMESPACE
from policy.parse import PolicyFileError, read_policy_text

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.25
V = TypeVar("V")


def build_mesh_state(
    registry: Registry,
    policies: Mapping[str, str],
    trust_domain: str,
    root_namespace: str,
    trust_bundles: Mapping[str, bytes] | None = None,
    service_entries: Sequence[ServiceEntry] = (),
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
        service_entries=[service_entry_pb(e) for e in service_entries],
    )
    digest = hashlib.sha256(state.SerializeToString(deterministic=True)).hexdigest()
    state.version_info = digest[:16]
    return state


def service_entry_pb(e: ServiceEntry) -> pb.ServiceEntry:
    return pb.ServiceEntry(
        name=e.name,
        namespace=e.namespace,
        hosts=list(e.hosts),
        ports=list(e.ports),
        endpoints=list(e.endpoints),
        subject_alt_names=list(e.subject_alt_names),
    )


@dataclass(frozen=True)
class FileStamp:
    mtime_ns: int
    size: int
    inode: int


def file_stamp(path: Path) -> FileStamp | None:
    """What tells a changed file, without reading it: a new stamp. stat() follows symlinks, so a
    Kubernetes ConfigMap mount's update (a new `..data` directory swapped in by one rename, the
    file's own name a symlink through `..data`) shows as the new file's inode and mtime."""
    try:
        st = path.stat()
    except OSError:
        return None
    return FileStamp(st.st_mtime_ns, st.st_size, st.st_ino)


@dataclass
class _Scan:
    """What one read of the files found (made in a worker thread, applied on the event loop)."""

    registry: Registry | None = None  # a new good registry, or None: unchanged or refused
    policies: dict[str, str] = field(default_factory=dict)  # name -> new good text
    gone: list[str] = field(default_factory=list)  # policy files no longer there


def policy_entry_size(source: str, text: str) -> int:
    """The bytes one policy adds to a MeshState (a repeated field's element is independent of
    the others, so the state's size is its base plus the sum of these)."""
    return pb.MeshState(policies=[pb.PolicyDocument(source=source, yaml=text)]).ByteSize()


def policies_size(policies: Mapping[str, str]) -> int:
    return sum(policy_entry_size(s, t) for s, t in policies.items())


def service_entry_size(source: str, entry: ServiceEntry) -> int:
    """The bytes one ServiceEntry adds to a MeshState (as `policy_entry_size`)."""
    return pb.MeshState(service_entries=[service_entry_pb(entry)]).ByteSize()


def base_size(
    registry: Registry,
    trust_domain: str,
    root_namespace: str,
    bundles: Mapping[str, bytes],
    service_entries: Sequence[ServiceEntry] = (),
) -> int:
    """The bytes of a MeshState without its policies."""
    state = build_mesh_state(registry, {}, trust_domain, root_namespace, bundles, service_entries)
    return state.ByteSize()


def over_bound_reason(max_bytes: int) -> str:
    return (
        f"the mesh state would exceed {max_bytes} bytes with it (the mesh state's bound, "
        "MESH_STATE_MAX_BYTES)"
    )


@dataclass(frozen=True)
class Fitted(Generic[V]):
    entries: dict[str, V]  # what is in force: the policies' texts, or the ServiceEntries
    refused: tuple[str, ...]  # the sources whose change would not fit (their last good kept)
    size: int  # `base` plus every entry in force


def fit_entries(
    base: int,
    current: Mapping[str, V],
    changes: Mapping[str, V],
    max_bytes: int,
    entry_size: Callable[[str, V], int],
) -> Fitted[V]:
    """`current` (the last good version of every entry that stays) with each of `changes`
    taken, in source order, while the state (`base` plus every entry) stays within `max_bytes`.

    The one rule of the mesh state's bound, for the files and for the Kubernetes API alike, for
    policies and ServiceEntries: a change that would cross it is refused at its source and the
    rest of the mesh moves on."""
    entries = dict(current)
    size = base + sum(entry_size(s, v) for s, v in entries.items())
    refused = []
    for source in sorted(changes):
        value = changes[source]
        grown = size + entry_size(source, value)
        if source in entries:
            grown -= entry_size(source, entries[source])
        if grown > max_bytes:
            refused.append(source)
            continue
        entries[source], size = value, grown
    return Fitted(entries, tuple(refused), size)


def fit_policies(
    base: int, current: Mapping[str, str], changes: Mapping[str, str], max_bytes: int
) -> Fitted[str]:
    """`fit_entries` for policy texts."""
    return fit_entries(base, current, changes, max_bytes, policy_entry_size)


class MeshStateSource:
    """Holds the current registry and MeshState; `changed` wakes waiters on every new version.

    Files are read and parsed in a worker thread, never on the event loop: a file that is slow
    to parse (at most what `meshward_common.yaml_lines` bounds it to) does not stall the loop's
    other work. A change that would make the state larger than `MESH_STATE_MAX_BYTES` is refused
    at the source, with the file that caused it, and the last good state is kept."""

    def __init__(
        self,
        registry_path: Path | None,
        policy_dir: Path | None,
        trust_domain: str,
        root_namespace: str = DEFAULT_ROOT_NAMESPACE,
        max_state_bytes: int = MESH_STATE_MAX_BYTES,
    ) -> None:
        self.registry_path = registry_path
        self.policy_dir = policy_dir
        self.trust_domain = trust_domain
        self.root_namespace = root_namespace
        self.max_state_bytes = max_state_bytes
        self.registry = Registry()
        self._policies: dict[str, str] = {}
        self._bundles: dict[str, bytes] = {}
        self._service_entries: tuple[ServiceEntry, ...] = ()
        self._stamps: dict[Path, FileStamp | None] = {}  # touched by the scanning thread only
        self.changed = asyncio.Condition()
        self.state = build_mesh_state(self.registry, {}, trust_domain, root_namespace)
        self._base_size = self.state.ByteSize()  # the state without its policies

    def load_initial(self) -> None:
        """First load: a bad registry at startup is a ConfigError (nothing good to keep); a bad
        policy file is reported and skipped, as at runtime."""
        registry = None
        if self.registry_path is not None:
            registry = self._checked(load_registry(self.registry_path))
            self._stamps[self.registry_path] = file_stamp(self.registry_path)
        self._apply(self._scan_policies(_Scan(registry=registry)))
        if registry is not None and self.registry is not registry:
            raise ConfigError(
                f"{self.registry_path}:1: registry: {over_bound_reason(self.max_state_bytes)}"
            )
        self._rebuild()

    def _checked(self, registry: Registry) -> Registry:
        if registry.trust_domain and registry.trust_domain != self.trust_domain:
            raise ConfigError(
                f"{self.registry_path}:1: trustDomain: {registry.trust_domain!r} does not match "
                f"the CA's {self.trust_domain!r}"
            )
        return registry

    # -- reading the files (worker thread) -------------------------------------------------------

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

    def _scan_policies(self, scan: _Scan) -> _Scan:
        files = self._policy_files()
        names = {p.name for p in files}
        scan.gone = [n for n in self._policies if n not in names]
        for path in files:
            stamp = file_stamp(path)
            if path in self._stamps and self._stamps[path] == stamp:
                continue
            self._stamps[path] = stamp
            try:
                text = read_policy_text(path)
                parse_text(text, str(path))
            except PolicyFileError as exc:
                for problem in exc.problems:  # one line each, as `meshward authz lint` prints
                    log.error("policy refused, keeping the last good version: %s", problem)
                continue
            if self._policies.get(path.name) != text:
                scan.policies[path.name] = text
        return scan

    def _scan_registry(self, scan: _Scan) -> _Scan:
        if self.registry_path is None:
            return scan
        stamp = file_stamp(self.registry_path)
        if stamp == self._stamps.get(self.registry_path):
            return scan
        self._stamps[self.registry_path] = stamp
        try:
            registry = self._checked(load_registry(self.registry_path))
        except ConfigError as exc:
            log.error("registry refused, keeping the last good one: %s", exc)
            return scan
        if registry != self.registry:
            scan.registry = registry
        return scan

    def _scan(self) -> _Scan:
        return self._scan_policies(self._scan_registry(_Scan()))

    # -- applying what was read (event loop) -------------------------------------------------------

    def _apply(self, scan: _Scan) -> bool:
        """Take the scan's changes that keep the state within its bound; True if any was taken."""
        policies = {n: t for n, t in self._policies.items() if n not in scan.gone}
        base = self._base_size
        changed = bool(scan.gone)
        if scan.registry is not None:
            new_base = base_size(
                scan.registry, self.trust_domain, self.root_namespace, self._bundles,
                self._service_entries,
            )  # fmt: skip
            if new_base + policies_size(policies) > self.max_state_bytes:
                log.error(
                    "registry refused, keeping the last good one: %s:1: registry: %s",
                    self.registry_path, over_bound_reason(self.max_state_bytes),
                )  # fmt: skip
            else:
                self.registry, base, changed = scan.registry, new_base, True
                log.info("registry reloaded: %d workloads", len(self.registry.workloads))
        fitted = fit_policies(base, policies, scan.policies, self.max_state_bytes)
        for name in fitted.refused:
            where = self.policy_dir / name if self.policy_dir is not None else name
            log.error(
                "policy refused, keeping the last good version: %s:1: file: %s",
                where, over_bound_reason(self.max_state_bytes),
            )  # fmt: skip
        changed = changed or fitted.entries != policies
        self._policies, self._base_size = fitted.entries, base
        return changed

    def set_trust_bundles(self, bundles: Mapping[str, bytes]) -> bool:
        """New trust bundles (a root rotation); True if the served state changed."""
        if dict(bundles) == self._bundles:
            return False
        self._bundles = dict(bundles)
        self._base_size = base_size(
            self.registry, self.trust_domain, self.root_namespace, self._bundles,
            self._service_entries,
        )  # fmt: skip
        self._rebuild()
        return True

    def set_service_entries(self, entries: Sequence[ServiceEntry], where: str = "") -> bool:
        """New federated services (`ca.service_entries`); True if the served state changed.
        Entries that would take the state past its bound are refused whole, the last good kept."""
        if tuple(entries) == self._service_entries:
            return False
        base = base_size(
            self.registry, self.trust_domain, self.root_namespace, self._bundles, entries
        )
        if base + policies_size(self._policies) > self.max_state_bytes:
            log.error(
                "ServiceEntry files refused, keeping the last good ones: %s: %s",
                where or "service-entry-dir", over_bound_reason(self.max_state_bytes),
            )  # fmt: skip
            return False
        self._service_entries, self._base_size = tuple(entries), base
        self._rebuild()
        return True

    def _rebuild(self) -> None:
        self.state = build_mesh_state(
            self.registry, self._policies, self.trust_domain, self.root_namespace, self._bundles,
            self._service_entries,
        )  # fmt: skip

    async def poll_once(self) -> None:
        scan = await asyncio.to_thread(self._scan)
        if self._apply(scan):
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
