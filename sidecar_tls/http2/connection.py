"""One HTTP/2 connection of the sidecar (either role), as an asyncio protocol around `h2`.

`H2Side` feeds received bytes to h2's state machine and hands the events of each stream to the
`StreamPair` that carries it (sidecar_tls.http2.streams); a new request on a server-role side goes
to its `Acceptor`. Events on one side write frames on another (a request's DATA goes out on the
upstream side), so every side with frames to send is flushed once at the end of each read.

Flow control is per stream, end to end: received DATA is credited back to its sender only when it
has been handed on (so a stream whose reader is slow fills its own window and stops, and no other
stream waits for it), while the connection's window is large and credited at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Final, cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hyperframe.frame

from sidecar_tls.http2.headers import Encoder

if TYPE_CHECKING:
    from sidecar_tls.http2.streams import StreamPair

log = logging.getLogger(__name__)

STREAM_WINDOW: Final = 1 << 20  # what one stream may have in flight towards us
CONNECTION_WINDOW: Final = 16 << 20
MAX_CONCURRENT_STREAMS: Final = 256  # that we accept from a downstream
ASSUMED_PEER_STREAMS: Final = 100  # until the peer's SETTINGS say (RFC 9113 suggests >= 100)
_DEFAULT_WINDOW: Final = 65535
_READ_SIZE: Final = 64 * 1024
_READ_VIEW: Final = memoryview(bytearray(_READ_SIZE))  # see http1.upstream: one buffer, copied out

# Sides with frames to send: flushed at the end of the read that produced them.
_DIRTY: Final[list[H2Side]] = []


class Acceptor:
    """What a server-role side does with a new request stream (base class: direct calls)."""

    def accept(
        self, side: H2Side, stream_id: int, headers: list[tuple[bytes, bytes]], ended: bool
    ) -> None:
        raise NotImplementedError

    def connection_lost(self, side: H2Side) -> None:
        return None


class H2Side:
    """One HTTP/2 connection. Plain TCP reads arrive as bytes; over TLS use `TlsH2Side`."""

    def __init__(self, client_side: bool, acceptor: Acceptor | None = None) -> None:
        config = h2.config.H2Configuration(
            client_side=client_side,
            header_encoding=None,
            # Malformed requests are stream errors, checked per stream (http2.headers); h2's
            # inbound validation would make them connection errors.
            validate_inbound_headers=False,
            normalize_inbound_headers=False,
            # What goes out was checked coming in (or is ours): h2's per-header pass over every
            # block sent would only repeat it.
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        self.conn = h2.connection.H2Connection(config)
        self.conn.encoder = Encoder()
        self.conn.local_settings = h2.settings.Settings(
            client=client_side,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 64 * 1024,
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
            },
        )
        self.client_side = client_side
        self.acceptor = acceptor
        self.transport: asyncio.Transport | None = None
        self.pairs: dict[int, StreamPair] = {}
        self.active = 0  # streams this side opened that are not finished (client role)
        self.closed = False
        self.draining = False  # GOAWAY seen or sent: no new streams on this connection
        self.retired = False  # an upstream no longer fit for new streams: closes when idle
        # The peer's SETTINGS_MAX_CONCURRENT_STREAMS, read once per SETTINGS (h2's settings
        # object answers through a Python-level Mapping.get on every read).
        self.peer_streams = ASSUMED_PEER_STREAMS
        self.generation = 0  # TLS generation it was opened with (upstreams to peer sidecars)
        self.peer_id = ""  # the verified SPIFFE ID of the peer, when mTLS
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._conn_credit = 0
        self._dirty = False
        self._idle: asyncio.Future[None] | None = None  # draining: set when no stream is left

    # asyncio protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # TCP_NODELAY: proxy.net
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(CONNECTION_WINDOW - _DEFAULT_WINDOW)
        self.flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            # A connection error (h2 has queued GOAWAY): every stream on it ends.
            log.info("HTTP/2 connection error from peer: %s", exc)
            self.flush()
            self.close()
            return
        for event in events:
            self._dispatch(event)
        self.mark_dirty()
        flush_dirty()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.draining = True
        pairs = list(self.pairs.values())
        self.pairs.clear()
        for pair in pairs:
            pair.side_lost(self)
        if self.acceptor is not None:
            self.acceptor.connection_lost(self)
        if not self.done.done():
            self.done.set_result(None)
        flush_dirty()

    def pause_writing(self) -> None:
        return None  # bounded by the peers' flow-control windows

    def resume_writing(self) -> None:
        return None

    # events

    def _dispatch(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.DataReceived):
            flow = event.flow_controlled_length or 0
            self._conn_credit += flow
            if self._conn_credit >= CONNECTION_WINDOW // 4:
                self.conn.increment_flow_control_window(self._conn_credit)
                self._conn_credit = 0
            pair = self.pairs.get(event.stream_id or 0)
            if pair is not None:
                pair.data(self, event.data or b"", flow, event.stream_ended is not None)
        elif isinstance(event, h2.events.RequestReceived):
            sid = event.stream_id or 0
            if self.acceptor is None or self.draining:
                self.conn.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
            else:
                self.acceptor.accept(
                    self, sid, list(event.headers or ()), event.stream_ended is not None
                )
        elif isinstance(event, h2.events.ResponseReceived):
            pair = self.pairs.get(event.stream_id or 0)
            if pair is not None:
                pair.response(list(event.headers or ()), event.stream_ended is not None)
        elif isinstance(event, h2.events.StreamEnded):
            pair = self.pairs.get(event.stream_id or 0)
            if pair is not None:
                pair.ended(self)
        elif isinstance(event, h2.events.WindowUpdated):
            if event.stream_id:
                pair = self.pairs.get(event.stream_id)
                if pair is not None:
                    pair.window_opened(self)
            else:
                for pair in list(self.pairs.values()):
                    pair.window_opened(self)
        elif isinstance(event, h2.events.TrailersReceived):
            pair = self.pairs.get(event.stream_id or 0)
            if pair is not None:
                pair.trailers(self, list(event.headers or ()))
        elif isinstance(event, h2.events.StreamReset):
            pair = self.pairs.pop(event.stream_id or 0, None)
            if pair is not None:
                pair.reset(self, int(event.error_code or 0))
        elif isinstance(event, h2.events.InformationalResponseReceived):
            pair = self.pairs.get(event.stream_id or 0)
            if pair is not None:
                pair.informational(list(event.headers or ()))
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self.peer_streams = self.conn.remote_settings.max_concurrent_streams
            for pair in list(self.pairs.values()):  # a new initial window opens every stream
                pair.window_opened(self)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._goaway(int(event.last_stream_id or 0), int(event.error_code or 0))

    def _goaway(self, last_stream_id: int, error_code: int) -> None:
        """The peer sent GOAWAY: nothing new on this connection. Streams it never processed
        (ours above `last_stream_id`) are refused downstream, so their callers retry them."""
        self.draining = True
        if not self.client_side:
            return  # a client going away: its open streams still finish
        for sid in [s for s in self.pairs if s > last_stream_id]:
            pair = self.pairs.pop(sid)
            pair.reset(self, h2.errors.ErrorCodes.REFUSED_STREAM)
        if error_code != h2.errors.ErrorCodes.NO_ERROR:
            log.info("upstream HTTP/2 connection ended with GOAWAY error %d", error_code)

    # writing

    def mark_dirty(self) -> None:
        if not self._dirty:
            self._dirty = True
            _DIRTY.append(self)

    def flush(self) -> None:
        self._dirty = False
        data = self.conn.data_to_send()
        transport = self.transport
        if data and transport is not None and not transport.is_closing():
            transport.write(data)

    # streams

    def capacity(self) -> int:
        """How many more streams this (client-role) side may open now."""
        if self.closed or self.draining:
            return 0
        return self.peer_streams - self.active

    def usable(self) -> bool:
        return not self.closed and not self.draining and self.transport is not None

    def forget(self, stream_id: int, opened_here: bool) -> None:
        """A stream of this side is finished. A retired upstream connection (made with an older
        certificate) closes once its last stream has."""
        self.pairs.pop(stream_id, None)
        idle = self._idle
        if idle is not None and not self.pairs and not idle.done():
            idle.set_result(None)
        if opened_here:
            self.active -= 1
            if self.retired and self.active <= 0:
                self.goaway()
                self.close()

    def until_idle(self) -> asyncio.Future[None]:
        """Done when no stream is left on this side (checked as streams finish: `forget`)."""
        idle: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not self.pairs:
            idle.set_result(None)
        self._idle = idle
        return idle

    def credit(self, stream_id: int, n: int) -> None:
        """Let the peer send `n` more bytes on the stream (they have been handed on)."""
        with contextlib.suppress(h2.exceptions.StreamClosedError, KeyError):
            self.conn.increment_flow_control_window(n, stream_id)
        self.mark_dirty()

    def goaway(self) -> None:
        """Tell the peer no new streams will be taken (the open ones finish: new ones are refused
        while `draining`). The frame is written here, after what h2 has queued: h2's own
        close_connection would close its state machine, and every later frame of the streams
        still open would be a protocol error."""
        if not self.closed and not self.draining:
            self.draining = True
            self.flush()
            transport = self.transport
            if transport is not None and not transport.is_closing():
                last = self.conn.highest_inbound_stream_id
                transport.write(hyperframe.frame.GoAwayFrame(0, last_stream_id=last).serialize())

    def close(self) -> None:
        self.draining = True
        if self.transport is not None:
            self.transport.close()

    def drain(self) -> asyncio.Future[None]:
        """The sidecar stops (`sidecar_tls.draining`): GOAWAY NO_ERROR with the last stream it
        took (the peer retries the streams it never got on another connection instead of seeing
        the connection drop); drained when no stream is left."""
        self.goaway()
        return self.until_idle()

    def end(self) -> None:
        self.close()


class TlsH2Side(H2Side):
    """An HTTP/2 connection over TLS: decrypted into the shared read buffer."""

    def get_buffer(self, sizehint: int) -> memoryview:
        return _READ_VIEW

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(_READ_VIEW[:nbytes]))


def flush_dirty() -> None:
    """Write the frames every side touched since the last flush has queued."""
    while _DIRTY:
        _DIRTY.pop().flush()
