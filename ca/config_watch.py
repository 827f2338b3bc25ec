"""The CA's config file, followed while it runs (as istiod follows its mesh config).

`meshward ca serve --config FILE` re-reads FILE whenever its stamp changes (`file_stamp`, polled
with the registry and policy files; a Kubernetes ConfigMap mount's `..data` swap included) with
the one config reader (`ca.config.load_config`: the file under the same command-line flags).

What can change live is applied: `federates-with`, the federation relationships (what SPIRE's
federation API and its ClusterFederatedTrustDomain objects change at runtime). The other settings
are fixed by what the CA opened at start (listening sockets, worker processes, the state
directory, the trust domain its root names): a change to them is one log line saying it takes
effect at restart, and the live part of the same edit is still applied. A file that cannot be read
or is invalid is one log line (`FILE:LINE: what`) and the last good settings stay in force; the
status file (`meshward check`) says so until a good version is in place.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ca.config import CaConfig, load_config, locate_problem
from ca.mesh_state import FileStamp, file_stamp
from meshward_common.errors import ConfigError

log = logging.getLogger(__name__)

LIVE_FIELDS = frozenset({"federates_with"})
# CaConfig fields set by a key of another name.
_SETTING = {"host": "listen", "port": "listen", "agent_namespace": "agent-service-account"}


def setting_name(field: str) -> str:
    """The config file's key for a CaConfig field."""
    return _SETTING.get(field, field.replace("_", "-"))


def restart_only_changes(started: CaConfig, new: CaConfig) -> tuple[str, ...]:
    """The keys whose new value differs from the one the CA started with and cannot be applied
    live (in the file's key order of CaConfig)."""
    out: list[str] = []
    for field in dataclasses.fields(CaConfig):
        if field.name in LIVE_FIELDS:
            continue
        name = setting_name(field.name)
        if getattr(started, field.name) != getattr(new, field.name) and name not in out:
            out.append(name)
    return tuple(out)


@dataclass(frozen=True)
class ConfigSource:
    """Where the CA's settings come from: the file and the flags given beside it."""

    path: Path
    flags: Mapping[str, Any]

    def load(self) -> CaConfig:
        return load_config(self.path, self.flags)


class ConfigWatch:
    """The config file's state: the settings in force, a refusal, the keys waiting for a restart."""

    def __init__(self, source: ConfigSource, started: CaConfig) -> None:
        self.source = source
        self.started = started
        self.in_force = started
        self.error = ""
        self.restart_pending: tuple[str, ...] = ()
        self._stamp: FileStamp | None = file_stamp(source.path)

    def changed(self) -> bool:
        """Whether the file changed since the last call (each change is read once)."""
        stamp = file_stamp(self.source.path)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        return True

    def refused(self, exc: ConfigError) -> None:
        """The new version is bad: one line naming file and line; the last good one stays."""
        located = str(locate_problem(self.source.path, exc, self.source.flags))
        if located != self.error:
            log.error("config refused, keeping the last good settings: %s", located)
        self.error = located

    def took(self, new: CaConfig, applied: list[str]) -> None:
        """The new version is in force as far as it can be without a restart."""
        path = self.source.path
        if self.error:
            log.info("config %s: valid again", path)
        self.error, self.in_force = "", new
        if applied:
            log.info("config %s: federates-with applied: %s", path, ", ".join(applied))
        pending = restart_only_changes(self.started, new)
        if pending and pending != self.restart_pending:
            log.warning(
                "config %s: %s changed: takes effect when the CA restarts (live settings applied)",
                path, ", ".join(pending),
            )  # fmt: skip
        self.restart_pending = pending

    def status(self) -> dict[str, object]:
        return {
            "file": str(self.source.path),
            "error": self.error,
            "restart_pending": list(self.restart_pending),
        }
