"""Holding a downstream connection's task until the connection is gone, and draining it when the
sidecar stops (as Envoy drains its listeners): the one mechanism for both codecs
(`http1.relay.HttpRelay`, `http2.connection.H2Side`).

Cancelled, the holder asks the connection to drain (HTTP/1.1: an idle connection closes now, an
exchange in flight finishes with `connection: close`; HTTP/2: GOAWAY, the open streams finish),
waits for that for `drain_s` at most, then ends the connection (cut if it is still busy) and
re-raises the cancellation. The connection's own `done` future is shielded: the cancellation of
the holder must not cancel it, or the drain would see the connection as gone at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final, Protocol

# How long a stopping sidecar lets a connection's exchanges or streams finish: Istio's default
# terminationDrainDuration.
DRAIN_S: Final = 5.0


class Drainable(Protocol):
    @property
    def done(self) -> asyncio.Future[None]:
        """Set when the connection is gone."""
        ...

    def drain(self) -> asyncio.Future[None]:
        """Stop taking new work; the future is set when nothing is left in flight."""
        ...

    def end(self) -> None:
        """Close the connection now, cutting what is still in flight."""
        ...


async def hold(conn: Drainable, drain_s: float) -> None:
    stopped = False
    try:
        await asyncio.shield(conn.done)
    except asyncio.CancelledError:
        stopped = True  # drained below, outside the handler (mypyc: no await in an except)
    try:
        if stopped:
            await _drain(conn, drain_s)
    finally:
        conn.end()
    if stopped:
        raise asyncio.CancelledError


async def _drain(conn: Drainable, drain_s: float) -> None:
    drained = conn.drain()
    if drained.done() or conn.done.done() or drain_s <= 0:
        return
    with contextlib.suppress(asyncio.CancelledError):  # cancelled again: end now
        await asyncio.wait(
            (conn.done, drained), timeout=drain_s, return_when=asyncio.FIRST_COMPLETED
        )
