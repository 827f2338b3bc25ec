"""A stopping sidecar drains its HTTP/1.1 connections as Envoy does, on both paths (the app's
plaintext connections to the outbound proxy, the peers' mTLS connections to the inbound one): no
new connection is taken, an idle keep-alive connection is closed, a request in flight finishes and
its response says `connection: close` before the connection closes; a request still in flight
when the drain time is up is cut, and the stop completes. (HTTP/2: test_drain.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from sidecar_tls.proxy.inbound import InboundProxy
from sidecar_tls.proxy.outbound import OutboundProxy
from tests.sidecar_tls.loopback import (
    CLIENT_ID,
    SERVER_ID,
    GatedApp,
    Pair,
    refused,
    run_listener,
    sidecar_pair,
)
from tests.sidecar_tls.testca import MiniCA

BODY = b"b" * 300_000  # more than one read and one TLS record: the whole body must arrive
LONG_DRAIN = 120.0  # far more than any exchange here needs, even on a loaded machine
REQUEST = b"GET /slow HTTP/1.1\r\nhost: server\r\n\r\n"  # keep-alive: HTTP/1.1's default


@dataclass
class Stoppable:
    """One proxy of a sidecar pair on a listener of its own, which the test stops."""

    pair: Pair
    proxy: OutboundProxy | InboundProxy
    port: int
    ssl: ssl.SSLContext | None  # how a client connects: the client sidecar's mTLS for inbound
    _listener: contextlib.AbstractAsyncContextManager[int]
    _stopping: asyncio.Task[None] | None = field(default=None)

    def stop(self) -> asyncio.Task[None]:
        if self._stopping is None:
            self._stopping = asyncio.create_task(self._exit())
        return self._stopping

    async def _exit(self) -> None:
        await self._listener.__aexit__(None, None, None)

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.ssl is None:
            return await asyncio.open_connection("127.0.0.1", self.port)
        return await asyncio.open_connection(
            "127.0.0.1", self.port, ssl=self.ssl, server_hostname=""
        )


@contextlib.asynccontextmanager
async def stoppable(side: str, app: GatedApp, drain_s: float) -> AsyncIterator[Stoppable]:
    ca = MiniCA.create()
    async with sidecar_pair(ca.issue(CLIENT_ID), ca.issue(SERVER_ID), app) as pair:
        proxy: OutboundProxy | InboundProxy = pair.outbound if side == "outbound" else pair.inbound
        proxy.drain_s = drain_s
        listener = run_listener(proxy.handle)
        port = await listener.__aenter__()
        context = pair.client_state.material.client_http if side == "inbound" else None
        rig = Stoppable(pair, proxy, port, context, listener)
        try:
            yield rig
        finally:
            app.release.set()
            await asyncio.wait_for(rig.stop(), 60)


def _response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split(" ")[1]), headers, body


async def _read_to_eof(reader: asyncio.StreamReader) -> bytes:
    """What the proxy sends until it closes the connection (b"" if it closed without a word)."""
    with contextlib.suppress(ConnectionResetError, ssl.SSLError):
        return await asyncio.wait_for(reader.read(), 60)
    return b""


SIDES = pytest.mark.parametrize("side", ["outbound", "inbound"])


@SIDES
async def test_a_request_in_flight_finishes_with_connection_close_and_new_ones_are_refused(
    side: str,
) -> None:
    app = GatedApp(BODY)
    async with stoppable(side, app, LONG_DRAIN) as rig:
        reader, writer = await rig.connect()
        try:
            writer.write(REQUEST)
            await asyncio.wait_for(app.received.wait(), 30)
            stopping = rig.stop()
            await refused(rig.port)  # no new connection once the drain has begun
            with pytest.raises(ConnectionRefusedError):
                await rig.connect()
            assert not stopping.done()  # the stop waits for the exchange in flight
            app.release.set()
            data = await _read_to_eof(reader)  # the connection closes after the response
            await asyncio.wait_for(stopping, 60)  # and the stop completes once it has
        finally:
            writer.close()
    status, headers, body = _response(data)
    assert status == 200
    assert headers["connection"] == "close"  # not the app's keep-alive: the drain's close
    assert headers["content-length"] == str(len(BODY))
    assert body == BODY


@SIDES
async def test_an_idle_keep_alive_connection_is_closed_at_once(side: str) -> None:
    app = GatedApp(BODY)
    app.release.set()
    async with stoppable(side, app, LONG_DRAIN) as rig:
        reader, writer = await rig.connect()
        try:
            writer.write(REQUEST)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            body = await asyncio.wait_for(reader.readexactly(len(BODY)), 30)
            assert b"connection: keep-alive" in head.lower()  # kept open: idle from here on
            assert body == BODY
            # The stop does not wait out the drain time for a connection carrying nothing.
            await asyncio.wait_for(rig.stop(), LONG_DRAIN / 2)
            assert await _read_to_eof(reader) == b""  # closed, without another word
        finally:
            writer.close()


@SIDES
async def test_a_request_still_in_flight_at_the_drain_deadline_is_cut(side: str) -> None:
    app = GatedApp(BODY)  # never released while the proxy drains
    async with stoppable(side, app, drain_s=0.5) as rig:
        reader, writer = await rig.connect()
        try:
            writer.write(REQUEST)
            await asyncio.wait_for(app.received.wait(), 30)
            await asyncio.wait_for(rig.stop(), 60)  # the drain is bounded: the stop completes
            assert await _read_to_eof(reader) == b""  # cut: no response at all
        finally:
            writer.close()
