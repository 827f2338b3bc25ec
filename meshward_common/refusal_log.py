"""Refusals logged once per source per interval, so a hostile or broken caller cannot fill the log.

A client that sends garbage in a loop would otherwise write one line (or, worse, a traceback) per
request. The first refusal from a source in an interval is logged; the ones after it are counted
and their number is said in the next line logged for that source.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

DEFAULT_INTERVAL = 10.0
_MAX_SOURCES = 4096  # bounds the memory a flood of distinct sources can take


class RefusalLog:
    def __init__(
        self,
        logger: logging.Logger,
        interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        level: int = logging.WARNING,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self.level = level
        self._seen: dict[str, tuple[float, int]] = {}  # source -> (logged at, suppressed since)

    def refused(self, source: str, message: str) -> None:
        """Log `message` (one line, about `source`) unless `source` was logged this interval."""
        now = self.clock()
        logged_at, suppressed = self._seen.get(source, (None, 0))
        if logged_at is not None and now - logged_at < self.interval:
            self._seen[source] = (logged_at, suppressed + 1)
            return
        if len(self._seen) >= _MAX_SOURCES:
            self._forget_before(now - self.interval)
        self._seen[source] = (now, 0)
        more = f" (and {suppressed} more from {source} since the last line)" if suppressed else ""
        self.logger.log(self.level, "%s%s", message, more)

    def _forget_before(self, cutoff: float) -> None:
        self._seen = {s: v for s, v in self._seen.items() if v[0] >= cutoff}
        if len(self._seen) >= _MAX_SOURCES:
            self._seen.clear()  # all recent: logging a few lines twice is the lesser harm
