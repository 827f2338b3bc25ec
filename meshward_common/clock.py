"""The clock every component reads, passed in as a value so that tests can set the time."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

Clock = Callable[[], dt.datetime]


def utc_now() -> dt.datetime:
    """Now, timezone-aware in UTC: what certificates' validity windows compare against."""
    return dt.datetime.now(dt.UTC)
