"""A stopping sidecar drains its HTTP/2 connections: GOAWAY, then the streams already open finish
(a gRPC stream keeps going through the stop), bounded: a stream still open when the drain time
is up is cut, and the stop completes; once the last stream has finished the connection is closed
without waiting out the drain time for the client to close it."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from hpack import Decoder
from hyperframe.frame import Frame, GoAwayFrame, HeadersFrame

from sidecar_tls.destinations import resolve_destination
from tests.sidecar_tls import grpc_apps
from tests.sidecar_tls.h2_apps import RawH2Client, h2_echo_app
from tests.sidecar_tls.loopback import (
    CLIENT_ID,
    SERVER_ID,
    Pair,
    refused,
    run_listener,
    sidecar_pair,
)
from tests.sidecar_tls.testca import MiniCA


async def _stream_open(pair: Pair, within_s: float = 30.0) -> None:
    """Until the outbound sidecar carries a stream to the inbound one."""
    dest = resolve_destination(pair.client_state.snapshot, "127.0.0.1", pair.inbound_port)
    for _ in range(int(within_s / 0.05)):
        if any(s.active for s in pair.outbound.pool.h2_upstreams(dest).sides):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no stream to the inbound sidecar within {within_s}s")


async def test_a_stream_open_when_the_sidecar_stops_finishes(grpc_app: int) -> None:
    ca = MiniCA.create()
    async with sidecar_pair(ca.issue(CLIENT_ID), ca.issue(SERVER_ID), app_port=grpc_app) as pair:
        pair.outbound.drain_s = 120.0  # far more than the stream needs, even on a loaded machine
        listener = run_listener(pair.outbound.handle)  # an outbound listener this test stops
        port = await listener.__aenter__()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = ch.stream_stream(grpc_apps.path("Bidi"))()
            await call.write(b"before")
            assert await call.read() == b"before"
            stopping = asyncio.create_task(listener.__aexit__(None, None, None))
            await refused(port)
            await call.write(b"during")
            assert await call.read() == b"during"
            assert not stopping.done()  # the stop waits for the open stream
            await call.done_writing()
            assert await call.code() == grpc.StatusCode.OK
            await asyncio.wait_for(stopping, 30)  # and completes once it has finished


async def test_the_drain_is_bounded_a_stream_still_open_is_cut(grpc_app: int) -> None:
    ca = MiniCA.create()
    async with sidecar_pair(ca.issue(CLIENT_ID), ca.issue(SERVER_ID), app_port=grpc_app) as pair:
        pair.outbound.drain_s = 0.5
        listener = run_listener(pair.outbound.handle)
        port = await listener.__aenter__()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = ch.unary_unary(grpc_apps.path("Hang"))(b"")  # no deadline: never ends by itself
            await _stream_open(pair)
            await asyncio.wait_for(listener.__aexit__(None, None, None), 30)
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await asyncio.wait_for(call, 30)
    assert failed.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL)


async def _frames_until_closed(reader: asyncio.StreamReader) -> list[Frame]:
    """Every frame the sidecar sends until it closes the connection (read raw: h2's client
    state machine takes no frame after a GOAWAY, which HTTP/2 allows for the open streams)."""
    data = b""
    while chunk := await reader.read(65536):
        data += chunk
    frames = []
    while len(data) >= 9:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9 : 9 + length]))
        frames.append(frame)
        data = data[9 + length :]
    return frames


async def test_the_connection_closes_when_its_last_stream_finishes_not_at_the_deadline() -> None:
    ca = MiniCA.create()
    async with sidecar_pair(ca.issue(CLIENT_ID), ca.issue(SERVER_ID), h2_echo_app) as pair:
        pair.outbound.drain_s = 120.0  # the stop below must not wait for it
        listener = run_listener(pair.outbound.handle)
        port = await listener.__aenter__()
        client = await RawH2Client.connect(port)
        try:
            sid = client.conn.get_next_available_stream_id()
            head = [(":method", "POST"), (":scheme", "http"), (":authority", "server")]
            client.conn.send_headers(sid, [*head, (":path", "/slow")], end_stream=False)
            client.writer.write(client.conn.data_to_send())
            await _stream_open(pair)
            stopping = asyncio.create_task(listener.__aexit__(None, None, None))
            await refused(port)
            assert not stopping.done()  # the open stream holds the stop
            client.conn.end_stream(sid)
            client.writer.write(client.conn.data_to_send())
            # The client keeps its connection open after the GOAWAY: the sidecar closes it once
            # the stream has finished, long before the 120 s drain time.
            frames = await asyncio.wait_for(_frames_until_closed(client.reader), 30)
            await asyncio.wait_for(stopping, 30)
        finally:
            client.close()
    goaways = [f for f in frames if isinstance(f, GoAwayFrame)]
    assert [g.error_code for g in goaways] == [0]
    heads = [f for f in frames if isinstance(f, HeadersFrame) and f.stream_id == sid]
    assert dict(Decoder().decode(heads[0].data))[":status"] == "200"
    assert any(f.stream_id == sid and "END_STREAM" in f.flags for f in frames)
