"""The upstream side of the HTTP/1.1 relay: `UpstreamLink` (one upstream connection, handing what
it receives to the `HttpRelay` that owns it for the current request) and `RelayHooks` (what a
relay asks its proxy per request), and the read buffer TLS transports decrypt into.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final, cast

from mypy_extensions import mypyc_attr

from sidecar_tls.answers import LocalReply
from sidecar_tls.exchange import Admission
from sidecar_tls.http1.head import RequestHead

if TYPE_CHECKING:
    from sidecar_tls.http1.relay import HttpRelay

# TLS reads land here first and are copied out at once. A TLS transport given a plain Protocol
# decrypts with SSLObject.read(256 KiB): a fresh 256 KiB object per read, which glibc, depending on
# its dynamic mmap threshold, serves with mmap + mremap + munmap and page faults on every request
# (~40 us per request measured). A BufferedProtocol reads into a buffer we own instead. One buffer
# serves every connection: callbacks run one at a time on the event loop's thread and
# `buffer_updated` copies the bytes out before returning. Plain TCP keeps data_received: uvloop
# reads into its own buffer there, and the Python calls of the buffered path would only add cost.
READ_SIZE: Final = 64 * 1024
READ_VIEW: Final = memoryview(bytearray(READ_SIZE))


class UpstreamLink:
    """One upstream connection; delivers what it receives to the relay that currently owns it.

    Reads arrive as bytes (`data_received`): right for plain TCP, where uvloop makes them from
    its own buffer. Over TLS use `TlsUpstreamLink`."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.owner: HttpRelay | None = None
        self.closed = False
        self.generation = 0
        self.peer_id = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike
        self.transport = cast(asyncio.Transport, transport)  # TCP_NODELAY: proxy.net

    def data_received(self, data: bytes) -> None:
        if self.owner is not None:
            self.owner.response_data(data)
        else:  # nothing was asked: a server talking out of turn is not reused
            self.close()

    def eof_received(self) -> bool:
        return False  # the transport closes; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.owner is not None:
            self.owner.upstream_lost(exc)

    def pause_writing(self) -> None:
        if self.owner is not None:
            self.owner.pause_down()

    def resume_writing(self) -> None:
        if self.owner is not None:
            self.owner.resume_down()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def usable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()


def take_read(nbytes: int) -> bytes:
    return bytes(READ_VIEW[:nbytes])


class TlsUpstreamLink(UpstreamLink):
    """An upstream link over TLS: decrypted into the shared read buffer (see READ_VIEW)."""

    def get_buffer(self, sizehint: int) -> memoryview:
        return READ_VIEW

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(take_read(nbytes))


@mypyc_attr(allow_interpreted_subclasses=True)
class RelayHooks:
    """What a relay asks its proxy, per request. A base class (not a Protocol) so the compiled
    relay calls the implementations directly."""

    def prepare(self, head: RequestHead) -> Admission:
        """The request's header edits (the relay splices them into the head), or an answer."""
        raise NotImplementedError

    def take_upstream(self) -> UpstreamLink | None:
        raise NotImplementedError

    async def open_upstream(self) -> UpstreamLink:
        raise NotImplementedError

    def release_upstream(self, link: UpstreamLink, reusable: bool) -> None:
        raise NotImplementedError

    def upstream_failed(self, exc: BaseException) -> LocalReply:
        """The answer when no upstream could be had, or it reset before responding."""
        raise NotImplementedError
