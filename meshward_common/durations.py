"""Durations as operators write them in flags and config files: `30s`, `10m`, `24h`, `1h30m`.

The meaning is Go's `time.ParseDuration`, which Istio's and Kubernetes' flags use: every number
carries its unit, so a bare `30` is refused (is it seconds? minutes?) rather than guessed. Two
additions an operator of certificates expects: `d` for days. Fractions (`1.5h`) are refused:
write `1h30m`.
"""

from __future__ import annotations

import datetime as dt
import re

from meshward_common.errors import ConfigError

_PART_RE = re.compile(r"(\d+)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str, what: str = "duration", zero: bool = False) -> dt.timedelta:
    """`30s`, `10m`, `24h`, `1h30m`, `2d`, `500ms` into a positive timedelta, or a ConfigError
    naming `what` (the flag or config key). With `zero`, a zero duration (`0s`, or a bare `0` as
    Go reads it) is allowed too: for settings where 0 means "none" (Envoy's `timeout: 0s`)."""
    value = str(text).strip()
    if zero and value == "0":
        return dt.timedelta(0)
    parts = _PART_RE.findall(value)
    if not value or "".join(n + u for n, u in parts) != value:
        hint = " (give a unit: 30s, not 30)" if value.isdigit() else ""
        raise ConfigError(f"{what}: {text!r} is not a duration like 30s, 10m, 24h or 1h30m{hint}")
    seconds = sum(int(n) * _UNIT_SECONDS[u] for n, u in parts)
    if seconds < 0 or (seconds == 0 and not zero):
        raise ConfigError(f"{what}: {text!r} must be greater than zero")
    return dt.timedelta(seconds=seconds)


def format_duration(delta: dt.timedelta) -> str:
    """The shortest whole-unit form `parse_duration` reads back: `24h`, `10m`, `30s`."""
    seconds = int(delta.total_seconds())
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0:
        return f"{seconds // 60}m"
    return f"{seconds}s"
