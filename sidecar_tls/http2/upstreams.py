"""The client-side HTTP/2 connections to one upstream (a peer sidecar, or the app), with their
stream slots: as many streams on one connection as the peer's SETTINGS_MAX_CONCURRENT_STREAMS
allows, another connection when they are all taken.

A connection that no longer fits (opened with an older certificate, or its peer no longer the one
the destination expects) takes no new streams; the streams it carries finish on it, and it closes
after its last one (rotation without failing a call).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from sidecar_tls.http2.connection import H2Side

Fits = Callable[[H2Side], bool]


def _always(_side: H2Side) -> bool:
    return True


class H2Upstreams:
    def __init__(self, connect: Callable[[], Awaitable[H2Side]]) -> None:
        self._connect = connect
        self.sides: list[H2Side] = []
        self._opening: asyncio.Future[H2Side] | None = None
        self._claims = 0  # streams waiting for the connection being opened
        self.opened = 0

    def take(self, fits: Fits = _always) -> H2Side | None:
        """A connection with a free stream slot now; retires the ones that no longer fit."""
        found = None
        for side in list(self.sides):
            if not side.usable():
                self.sides.remove(side)
            elif not fits(side):
                self.sides.remove(side)
                self._retire(side)
            elif found is None and side.capacity() > 0:
                found = side
        return found

    async def get(self, fits: Fits = _always) -> H2Side:
        """A connection with a free slot, opened when none has one (concurrent callers share a
        connection being opened, up to the stream slots it is expected to have)."""
        while True:
            side = self.take(fits)
            if side is not None:
                return side
            opening = self._opening
            if opening is not None and self._claims < 100:
                self._claims += 1
                side = await asyncio.shield(opening)
                if side.capacity() > 0 and fits(side):
                    return side
                continue
            return await self._open()

    async def _open(self) -> H2Side:
        future: asyncio.Future[H2Side] = asyncio.get_running_loop().create_future()
        self._opening, self._claims = future, 1
        try:
            side = await self._connect()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: the waiters raise it themselves
            raise
        finally:
            if self._opening is future:
                self._opening, self._claims = None, 0
        self.opened += 1
        self.sides.append(side)
        future.set_result(side)
        return side

    @staticmethod
    def _retire(side: H2Side) -> None:
        side.retired = True
        if side.active <= 0:
            side.goaway()
            side.close()

    def close_all(self) -> None:
        for side in self.sides:
            side.goaway()
            side.close()
        self.sides.clear()

    def __len__(self) -> int:
        return len(self.sides)
