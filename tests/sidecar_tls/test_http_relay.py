"""The relay's message boundaries through both sidecars: chunked bodies, interim and pipelined
responses, and requests whose end two parsers could disagree on (refused before any app sees them)."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from tests.sidecar_tls.loopback import CLIENT_ID, SERVER_ID, sidecar_pair
from tests.sidecar_tls.testca import MiniCA


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = b""
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")  # no trailers: the blank line
            return body
        body += (await reader.readexactly(size + 2))[:-2]


def _recording_app(seen: list[bytes], interim: bool = False):  # type: ignore[no-untyped-def]
    """Reads each request's body (chunked or by length), records head + body, answers chunked."""

    async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                lower = head.lower()
                if interim and b"expect: 100-continue" in lower:
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    await writer.drain()
                if b"transfer-encoding: chunked" in lower:
                    body = await _read_chunked(reader)
                elif b"content-length:" in lower:
                    n = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
                    body = await reader.readexactly(n)
                else:
                    body = b""
                seen.append(head.split(b"\r\n")[0] + b" " + body)
                answer = b"got " + body
                writer.write(
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                    + f"{len(answer):x}\r\n".encode()
                    + answer
                    + b"\r\n0\r\n\r\n"
                )
                await writer.drain()
        finally:
            writer.close()

    return app


async def _response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        return status, await _read_chunked(reader)
    n = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    return status, await reader.readexactly(n)


async def test_chunked_request_and_response_bodies_keep_the_connection_usable() -> None:
    ca = MiniCA.create()
    seen: list[bytes] = []
    async with sidecar_pair(ca.issue(CLIENT_ID), ca.issue(SERVER_ID), _recording_app(seen)) as p:
        reader, writer = await asyncio.open_connection("127.0.0.1", p.outbound_port)
        writer.write(b"POST /a HTTP/1.1\r\nhost: s\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel")
        await writer.drain()
        writer.write(b"lo\r\n6;ext=1\r\n world\r\n0\r\n\r\n")
        assert await _response(reader) == (200, b"got hello world")
        writer.write(b"GET /b HTTP/1.1\r\nhost: s\r\n\r\n")
        assert await _response(reader) == (200, b"got ")
        writer.close()
    assert seen == [b"POST /a HTTP/1.1 hello world", b"GET /b HTTP/1.1 "]


async def test_pipelined_requests_are_answered_in_order() -> None:
    ca = MiniCA.create()
    seen: list[bytes] = []
    async with sidecar_pair(ca.issue(CLIENT_ID), ca.issue(SERVER_ID), _recording_app(seen)) as p:
        reader, writer = await asyncio.open_connection("127.0.0.1", p.outbound_port)
        writer.write(
            b"POST /1 HTTP/1.1\r\nhost: s\r\ncontent-length: 3\r\n\r\nabc"
            b"GET /2 HTTP/1.1\r\nhost: s\r\n\r\n"
            b"POST /3 HTTP/1.1\r\nhost: s\r\ncontent-length: 1\r\n\r\nz"
        )
        answers = [await _response(reader) for _ in range(3)]
        writer.close()
    assert answers == [(200, b"got abc"), (200, b"got "), (200, b"got z")]
    assert [line.split(b" ")[1] for line in seen] == [b"/1", b"/2", b"/3"]


async def test_interim_100_continue_reaches_the_client_before_the_body_is_sent() -> None:
    ca = MiniCA.create()
    seen: list[bytes] = []
    app = _recording_app(seen, interim=True)
    async with sidecar_pair(ca.issue(CLIENT_ID), ca.issue(SERVER_ID), app) as p:
        reader, writer = await asyncio.open_connection("127.0.0.1", p.outbound_port)
        writer.write(
            b"PUT /up HTTP/1.1\r\nhost: s\r\nexpect: 100-continue\r\ncontent-length: 4\r\n\r\n"
        )
        # The client holds the body back until the interim response arrives through both hops.
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"data")
        assert await _response(reader) == (200, b"got data")
        writer.close()
    assert seen == [b"PUT /up HTTP/1.1 data"]


@pytest.mark.parametrize(
    ("request_bytes", "why"),
    [
        (
            b"POST / HTTP/1.1\r\nhost: s\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n",
            b"both Content-Length and Transfer-Encoding",
        ),
        (
            b"POST / HTTP/1.1\r\nhost: s\r\ncontent-length: 4\r\ncontent-length: 5\r\n\r\n",
            b"conflicting Content-Length",
        ),
        (
            b"POST / HTTP/1.1\r\nhost: s\r\ntransfer-encoding: gzip\r\n\r\n",
            b"does not end with chunked",
        ),
        (b"GET / HTTP/1.1\r\nhost: s\r\nx-a: 1\r\n folded\r\n\r\n", b"malformed HTTP header line"),
    ],
)
async def test_ambiguous_requests_are_refused_before_any_app_sees_them(
    request_bytes: bytes, why: bytes
) -> None:
    ca = MiniCA.create()
    seen: list[bytes] = []
    async with sidecar_pair(ca.issue(CLIENT_ID), ca.issue(SERVER_ID), _recording_app(seen)) as p:
        reader, writer = await asyncio.open_connection("127.0.0.1", p.outbound_port)
        writer.write(request_bytes + b"abcd")
        answer = await asyncio.wait_for(reader.read(), 10)  # answered, then closed
        writer.close()
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert why in answer
    assert seen == []


async def test_bad_chunk_size_closes_the_connection_without_a_second_request() -> None:
    ca = MiniCA.create()
    seen: list[bytes] = []
    async with sidecar_pair(ca.issue(CLIENT_ID), ca.issue(SERVER_ID), _recording_app(seen)) as p:
        reader, writer = await asyncio.open_connection("127.0.0.1", p.outbound_port)
        writer.write(
            b"POST / HTTP/1.1\r\nhost: s\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"
            b"GET /smuggled HTTP/1.1\r\nhost: s\r\n\r\n"
        )
        await asyncio.wait_for(reader.read(), 10)
        writer.close()
    assert all(b"/smuggled" not in line for line in seen)


async def test_a_large_body_sent_with_its_head_arrives_whole() -> None:
    await _large_body_round_trip()


def test_a_large_body_arrives_whole_on_uvloop() -> None:
    # The sidecar runs on uvloop, whose TLS transport reads into our buffer (BufferedProtocol)
    # by its own code path: bodies larger than that buffer, both ways.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_large_body_round_trip())


async def _large_body_round_trip() -> None:
    ca = MiniCA.create()
    seen: list[bytes] = []
    body = bytes(range(256)) * 400  # 100 kB, written together with the head
    async with sidecar_pair(ca.issue(CLIENT_ID), ca.issue(SERVER_ID), _recording_app(seen)) as p:
        reader, writer = await asyncio.open_connection("127.0.0.1", p.outbound_port)
        writer.write(
            b"POST /big HTTP/1.1\r\nhost: s\r\ncontent-length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        status, answer = await asyncio.wait_for(_response(reader), 10)
        writer.close()
    assert status == 200
    assert answer == b"got " + body
    assert seen == [b"POST /big HTTP/1.1 " + body]


async def _upgrading_app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Switches protocols when asked (keeping the upgrade headers), then echoes lines."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        lower = head.lower()
        if b"upgrade: echo" not in lower or b"connection: upgrade" not in lower:
            writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            return
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: echo\r\nconnection: upgrade\r\n\r\n"
        )
        while line := await reader.readline():
            writer.write(b"echo: " + line)
            await writer.drain()
    finally:
        writer.close()


async def test_upgrade_to_another_protocol_becomes_a_byte_tunnel() -> None:
    ca = MiniCA.create()
    async with sidecar_pair(ca.issue(CLIENT_ID), ca.issue(SERVER_ID), _upgrading_app) as p:
        reader, writer = await asyncio.open_connection("127.0.0.1", p.outbound_port)
        writer.write(b"GET /ws HTTP/1.1\r\nhost: s\r\nupgrade: echo\r\nconnection: upgrade\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 101 ")
        for word in (b"one", b"two"):
            writer.write(word + b"\n")
            assert await asyncio.wait_for(reader.readline(), 10) == b"echo: " + word + b"\n"
        writer.close()
