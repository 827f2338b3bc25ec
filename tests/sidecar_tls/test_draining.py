"""`sidecar_tls.draining.hold`, the one drain mechanism of both codecs, around a stand-in
connection (the codecs' own drains are tested end to end in test_drain*.py)."""

from __future__ import annotations

import asyncio

import pytest

from sidecar_tls.draining import hold


class _Conn:
    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = loop.create_future()
        self.drained: asyncio.Future[None] = loop.create_future()
        self.calls: list[str] = []
        self.draining = asyncio.Event()

    def drain(self) -> asyncio.Future[None]:
        self.calls.append("drain")
        self.draining.set()
        return self.drained

    def end(self) -> None:
        self.calls.append("end")


async def test_a_connection_that_ends_by_itself_is_ended_without_a_drain() -> None:
    conn = _Conn()
    task = asyncio.create_task(hold(conn, 120.0))
    await asyncio.sleep(0)
    conn.done.set_result(None)
    await asyncio.wait_for(task, 30)
    assert conn.calls == ["end"]


async def test_cancelled_it_drains_until_drained_then_ends_and_reraises() -> None:
    conn = _Conn()
    task = asyncio.create_task(hold(conn, 120.0))
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.wait_for(conn.draining.wait(), 30)
    assert not conn.done.cancelled()  # shielded: the drain still sees the connection
    assert not task.done()
    conn.drained.set_result(None)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 30)
    assert conn.calls == ["drain", "end"]


async def test_the_drain_is_bounded() -> None:
    conn = _Conn()
    task = asyncio.create_task(hold(conn, 0.05))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 30)  # never drained: ended at the deadline
    assert conn.calls == ["drain", "end"]


async def test_cancelled_again_while_draining_it_ends_now() -> None:
    conn = _Conn()
    task = asyncio.create_task(hold(conn, 120.0))
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.wait_for(conn.draining.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 30)
    assert conn.calls == ["drain", "end"]
