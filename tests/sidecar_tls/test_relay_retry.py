"""The relay's retry of a request sent on a reused upstream connection that the server had already
closed: once, on a fresh connection, and only for a request without a body."""

from __future__ import annotations

import asyncio

from sidecar_tls.answers import LocalReply, upstream_unavailable
from sidecar_tls.exchange import Admission
from sidecar_tls.http1.head import RequestHead
from sidecar_tls.http1.relay import HttpRelay
from sidecar_tls.http1.upstream import RelayHooks, UpstreamLink
from sidecar_tls.telemetry.observe import Hop, NoopObserver
from tests.sidecar_tls.loopback import Handler, serve_app


async def _dropper(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A server that had closed the idle connection: the request is read, never answered."""
    await reader.readuntil(b"\r\n\r\n")
    writer.close()


def _answering(seen: list[bytes]) -> Handler:
    async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                seen.append(head.split(b"\r\n")[0])
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    return app


_HOP = Hop(direction="outbound", protocol="http")


class _Hooks(RelayHooks):
    """The first request goes out on a reused link to `stale_port`; fresh ones to `fresh_port`."""

    def __init__(self, stale: UpstreamLink, fresh_port: int) -> None:
        self.stale: UpstreamLink | None = stale
        self.fresh_port = fresh_port
        self.opened = 0

    def prepare(self, head: RequestHead) -> Admission:
        return Admission(NoopObserver().start(_HOP, {}))

    def take_upstream(self) -> UpstreamLink | None:
        link, self.stale = self.stale, None
        return link

    async def open_upstream(self) -> UpstreamLink:
        self.opened += 1
        _, link = await asyncio.get_running_loop().create_connection(
            UpstreamLink, "127.0.0.1", self.fresh_port
        )
        return link

    def release_upstream(self, link: UpstreamLink, reusable: bool) -> None:
        link.close()

    def upstream_failed(self, exc: BaseException) -> LocalReply:
        return upstream_unavailable(str(exc))


async def _exchange(stale_port: int, fresh_port: int, request: bytes) -> tuple[bytes, _Hooks]:
    loop = asyncio.get_running_loop()
    _, stale = await loop.create_connection(UpstreamLink, "127.0.0.1", stale_port)
    hooks = _Hooks(stale, fresh_port)

    def relay() -> HttpRelay:
        r = HttpRelay(hooks)
        r.state = "head"  # started at once: no caller to verify here
        return r

    front = await loop.create_server(relay, "127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", front.sockets[0].getsockname()[1]
        )
        writer.write(request)
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        return answer, hooks
    finally:
        front.close()


GET = b"GET /x HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n"


async def test_request_on_a_connection_the_server_closed_is_sent_once_more() -> None:
    seen: list[bytes] = []
    async with serve_app(_dropper) as stale_port, serve_app(_answering(seen)) as fresh_port:
        answer, hooks = await _exchange(stale_port, fresh_port, GET)
    assert answer.startswith(b"HTTP/1.1 200 OK")
    assert answer.endswith(b"ok")
    assert seen == [b"GET /x HTTP/1.1"]
    assert hooks.opened == 1


async def test_the_retry_happens_once_only() -> None:
    async with serve_app(_dropper) as stale_port, serve_app(_dropper) as fresh_port:
        answer, hooks = await _exchange(stale_port, fresh_port, GET)
    assert answer.startswith(b"HTTP/1.1 503 ")
    assert b"upstream reset before responding" in answer
    assert hooks.opened == 1


async def test_a_request_with_a_body_is_not_sent_twice() -> None:
    seen: list[bytes] = []
    post = b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\nconnection: close\r\n\r\nabc"
    async with serve_app(_dropper) as stale_port, serve_app(_answering(seen)) as fresh_port:
        answer, hooks = await _exchange(stale_port, fresh_port, post)
    assert answer.startswith(b"HTTP/1.1 503 ")
    assert seen == []
    assert hooks.opened == 0
