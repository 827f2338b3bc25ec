"""HTTP/1.1 over asyncio streams: read one head, relay one body by its framing. Bodies are never
parsed, only delimited, so the sidecar knows where each request ends and can reuse connections."""

from __future__ import annotations

import asyncio

from meshward_common.errors import InvalidRequest
from sidecar_tls.http1 import MAX_HEAD_BYTES, Framing, parse_chunk_size
from sidecar_tls.net import RELAY_CHUNK


async def read_head(reader: asyncio.StreamReader) -> bytes | None:
    """The next message head including the blank line; None on a clean EOF between messages."""
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise InvalidRequest("connection closed in the middle of an HTTP head") from exc
    except asyncio.LimitOverrunError as exc:
        raise InvalidRequest(f"HTTP head larger than {MAX_HEAD_BYTES} bytes") from exc


async def relay_body(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    framing: Framing,
    length: int,
) -> int:
    """Copy one body from reader to writer; returns the bytes relayed."""
    if framing is Framing.NONE:
        return 0
    if framing is Framing.LENGTH:
        remaining = length
        while remaining:
            data = await reader.read(min(remaining, RELAY_CHUNK))
            if not data:
                raise asyncio.IncompleteReadError(b"", remaining)
            writer.write(data)
            remaining -= len(data)
            if remaining:
                await writer.drain()
        return length
    if framing is Framing.CHUNKED:
        return await _relay_chunked(reader, writer)
    total = 0  # CLOSE: until EOF
    while data := await reader.read(RELAY_CHUNK):
        writer.write(data)
        total += len(data)
        await writer.drain()
    return total


async def _relay_chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    total = 0
    while True:
        line = await reader.readuntil(b"\r\n")
        size = parse_chunk_size(line)
        writer.write(line)
        if size == 0:
            while True:  # trailers, then the final blank line
                trailer = await reader.readuntil(b"\r\n")
                writer.write(trailer)
                if trailer == b"\r\n":
                    return total
        data = await reader.readexactly(size + 2)
        if data[-2:] != b"\r\n":
            raise InvalidRequest("chunk data not followed by CRLF")
        writer.write(data)
        total += size
        await writer.drain()


class UpstreamClosed(Exception):
    """The upstream closed before sending a response head (a stale pooled connection)."""


async def exchange(
    request_head: bytes,
    method: str,
    framing: Framing,
    length: int,
    down: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    up: tuple[asyncio.StreamReader, asyncio.StreamWriter],
) -> tuple[int, int, bool, bool]:
    """Send one request (head + body from `down`) on `up` and relay the response back.

    Returns (status, response body bytes, upstream reusable, downstream must close).
    Raises UpstreamClosed when nothing at all came back (the caller may retry a bodyless request).
    """
    from sidecar_tls.http1 import parse_response_head

    down_reader, down_writer = down
    up_reader, up_writer = up
    up_writer.write(request_head)
    await relay_body(down_reader, up_writer, framing, length)
    await up_writer.drain()
    while True:
        raw = await read_head(up_reader)
        if raw is None:
            raise UpstreamClosed("upstream closed before responding")
        resp = parse_response_head(raw)
        down_writer.write(raw)
        if 100 <= resp.status < 200 and resp.status != 101:
            continue  # interim responses (100 Continue) pass through, the final one follows
        break
    if resp.status == 101:
        await down_writer.drain()
        return 101, 0, False, True  # the caller switches to a byte relay
    rframing, rlength = resp.framing(method)
    n = await relay_body(up_reader, down_writer, rframing, rlength)
    await down_writer.drain()
    reusable = resp.keep_alive and rframing is not Framing.CLOSE
    return resp.status, n, reusable, rframing is Framing.CLOSE or not resp.keep_alive
