"""The HTTP/2 streams' timers on one loop timer: due ones fire in order, cancelled ones never,
an earlier deadline than the armed one is honoured, and cancelled entries do not pile up."""

from __future__ import annotations

import asyncio

from sidecar_tls.http2.deadlines import Deadlines


async def test_due_timers_fire_in_deadline_order_and_cancelled_ones_never() -> None:
    deadlines, fired, done = Deadlines(), list[str](), asyncio.Event()

    def second() -> None:
        fired.append("second")
        done.set()

    deadlines.add(60.0, lambda: fired.append("later"))
    deadlines.add(0.2, second)
    cancelled = deadlines.add(0.1, lambda: fired.append("cancelled"))
    deadlines.add(0.05, lambda: fired.append("first"))  # earlier than the armed timer
    deadlines.cancel(cancelled)
    await asyncio.wait_for(done.wait(), timeout=30)
    assert fired == ["first", "second"]
    assert len(deadlines) == 1  # the 60 s one is still pending
    deadlines.close()
    assert len(deadlines) == 0


async def test_a_timer_added_after_a_fire_is_armed_again() -> None:
    deadlines, done = Deadlines(), asyncio.Event()
    first = asyncio.Event()
    deadlines.add(0.01, first.set)
    await asyncio.wait_for(first.wait(), timeout=30)
    deadlines.add(0.01, done.set)
    await asyncio.wait_for(done.wait(), timeout=30)


async def test_cancelled_timers_do_not_pile_up() -> None:
    deadlines = Deadlines()
    kept = [deadlines.add(60.0, lambda: None) for _ in range(10)]
    for _ in range(5000):  # calls that end long before their deadline
        deadlines.cancel(deadlines.add(60.0, lambda: None))
    assert len(deadlines) == len(kept)
    assert len(deadlines._heap) <= 2 * len(kept) + 65
    deadlines.close()
