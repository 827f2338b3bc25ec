"""The timers of one HTTP/2 connection's streams (gRPC deadlines, response timeouts) on one loop
timer.

Nearly every gRPC call carries a deadline (`grpc-timeout`) and nearly every call ends long before
it. A loop timer per call (uvloop's call_later, then cancel: 6-10 us with 64 in flight, on a
loaded 2-core machine) becomes a heap push and a dict entry, its cancellation a dict pop (1-3 us
interpreted), and the one loop timer is armed for the earliest deadline only (a new, later
deadline touches no loop timer at all). Cancelled entries leave the heap as they reach its top, or all at
once when they outnumber the live ones (so the heap stays within twice the timers in flight).
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable
from typing import Final

# A timer is due this much before its time: the loop's clock counts milliseconds (uvloop), so a
# loop timer can fire just short of the deadline it was armed for.
_EARLY_S: Final = 0.001


class Deadlines:
    """Timers on the running loop: `add` returns a token for `cancel`; `close` drops them all."""

    __slots__ = ("_armed_at", "_heap", "_live", "_loop", "_next", "_timer")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._heap: list[tuple[float, int]] = []  # (when, token), live or cancelled
        self._live: dict[int, Callable[[], None]] = {}
        self._next = 0
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at = 0.0

    def add(self, seconds: float, expired: Callable[[], None]) -> int:
        """Call `expired` in `seconds` unless cancelled first."""
        when = self._loop.time() + seconds
        self._next += 1
        token = self._next
        live = self._live
        live[token] = expired
        heap = self._heap
        if len(heap) > 2 * len(live) + 64:
            heap[:] = [entry for entry in heap if entry[1] in live]
            heapq.heapify(heap)
        heapq.heappush(heap, (when, token))
        if self._timer is None or when < self._armed_at:
            self._arm(when)
        return token

    def cancel(self, token: int) -> None:
        self._live.pop(token, None)

    def close(self) -> None:
        self._live.clear()
        self._heap.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def __len__(self) -> int:
        return len(self._live)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed_at = when
        self._timer = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        heap, live = self._heap, self._live
        due_by = self._loop.time() + _EARLY_S
        due: list[Callable[[], None]] = []
        while heap and (heap[0][0] <= due_by or heap[0][1] not in live):
            expired = live.pop(heapq.heappop(heap)[1], None)
            if expired is not None:
                due.append(expired)
        if heap:
            self._arm(heap[0][0])
        for expired in due:
            expired()
