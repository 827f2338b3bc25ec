"""The control plane's directory of Istio ServiceEntry files (`--service-entry-dir`): the
services of federated meshes its sidecars may call (`meshward_common.service_entry`).

Read like the policy directory: a changed file is parsed again, a file that no longer parses is
refused in one line naming file, line and field and its last good version stays, a removed file
takes its entries with it. The publisher puts what it holds into the MeshState.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ca.mesh_state import FileStamp, file_stamp
from meshward_common.errors import ConfigError
from meshward_common.service_entry import ServiceEntry, parse_service_entries
from meshward_common.yaml_lines import read_text

log = logging.getLogger(__name__)


class ServiceEntryDir:
    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self._held: dict[str, tuple[ServiceEntry, ...]] = {}  # file name -> its entries
        self._stamps: dict[str, FileStamp] = {}

    @property
    def entries(self) -> tuple[ServiceEntry, ...]:
        return tuple(e for name in sorted(self._held) for e in self._held[name])

    def _files(self) -> dict[str, Path]:
        if self.directory is None:
            return {}
        try:
            return {
                p.name: p
                for p in self.directory.iterdir()
                if p.suffix in (".yaml", ".yml") and p.is_file()
            }
        except OSError as exc:
            log.error(
                "%s: cannot list the ServiceEntry directory: %s", self.directory, exc.strerror
            )
            return {n: self.directory / n for n in self._held}  # keep what we hold

    def scan(self) -> bool:
        """Re-read changed files; True if the entries held changed."""
        changed = False
        files = self._files()
        for gone in [n for n in self._held if n not in files]:
            del self._held[gone]
            self._stamps.pop(gone, None)
            changed = True
        for name, path in sorted(files.items()):
            stamp = file_stamp(path)
            if stamp is None:
                continue
            if self._stamps.get(name) == stamp:
                continue
            self._stamps[name] = stamp
            try:  # read within the YAML files' bounds: size, UTF-8 (then nesting, aliases)
                entries = parse_service_entries(read_text(path), str(path))
            except ConfigError as exc:
                log.error("ServiceEntry refused, keeping the last good version: %s", exc)
                continue
            if self._held.get(name) != entries:
                self._held[name] = entries
                changed = True
        return changed
