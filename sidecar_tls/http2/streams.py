"""One request carried from a downstream HTTP/2 stream to an upstream one, and its response back.

`Forwarder` is the acceptor of a downstream connection: per new stream it checks the request head
(a malformed one is reset on its own, RST_STREAM PROTOCOL_ERROR), asks its `Route` for the
exchange's `Admission` (policy, identity, trace context: sidecar_tls.exchange), and either answers
with the sidecar's own reply or opens a stream on an upstream connection with the edited head.

`StreamPair` then relays DATA, trailers and the end of each direction as they come, within the
receiving side's flow-control window: what cannot be sent yet waits in the pair and is credited
back to its sender only once sent, so a slow reader holds up its own stream only. RST_STREAM on
either side resets the other with the same code; a connection lost (or a GOAWAY that refused the
stream) ends its streams the same way, or with the sidecar's 503 answer before any response.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Final

import h2.errors
import h2.exceptions

from sidecar_tls.answers import REQUEST_TIMEOUT_S, LocalReply, bad_response, upstream_timeout
from sidecar_tls.exchange import Admission, Exchange
from sidecar_tls.http2.connection import Acceptor, H2Side, flush_dirty
from sidecar_tls.http2.deadlines import Deadlines
from sidecar_tls.http2.headers import (
    Header,
    RequestView,
    edit,
    grpc_status_of,
    grpc_timeout_s,
    local_reply,
    request_problem,
    response_problem,
    status_of,
)
from sidecar_tls.telemetry.observe import HopSpan, Protocol_

log = logging.getLogger(__name__)

_CREDIT_BATCH: Final = 64 * 1024  # window credit sent back in steps of this much (or at the end)
_PROTOCOL_ERROR: Final = int(h2.errors.ErrorCodes.PROTOCOL_ERROR)
_CANCEL: Final = int(h2.errors.ErrorCodes.CANCEL)
_INTERNAL_ERROR: Final = int(h2.errors.ErrorCodes.INTERNAL_ERROR)


class Route:
    """Where a downstream connection's streams go, and what the exchange says of each (a base
    class: the forwarder calls it directly)."""

    def __init__(self) -> None:
        self._exchanges: dict[bool, Exchange] = {}  # gRPC or not: labelled apart (Istio)

    def admit(self, view: RequestView) -> Admission:
        exchange = self._exchanges.get(view.grpc)
        if exchange is None:
            exchange = self.exchange("grpc" if view.grpc else "http")
            self._exchanges[view.grpc] = exchange
        return exchange.admit(view.method, view.path, view.authority, view.by_name)

    def exchange(self, protocol: Protocol_) -> Exchange:
        """The connection's exchange for its gRPC calls or for its other requests."""
        raise NotImplementedError

    def take_upstream(self) -> H2Side | None:
        """An upstream connection with a free stream slot now, or None."""
        raise NotImplementedError

    async def open_upstream(self) -> H2Side:
        raise NotImplementedError

    def upstream_failed(self, exc: BaseException) -> LocalReply:
        raise NotImplementedError

    def closed(self) -> None:
        """The downstream connection is gone."""
        return


class _Direction:
    """What waits to be sent one way: DATA chunks, then trailers or the end of the stream."""

    __slots__ = ("chunks", "credit", "end", "ended_sent", "trailers")

    def __init__(self) -> None:
        self.chunks: deque[bytes] = deque()
        self.end = False  # the sender ended its side of the stream
        self.trailers: list[Header] | None = None
        self.ended_sent = False
        self.credit = 0  # bytes handed on, not yet credited back to the sender


class StreamPair:
    """One request/response: the downstream stream and, once opened, the upstream one."""

    __slots__ = (
        "bytes_down",
        "deadlines",
        "down",
        "down_sid",
        "grpc",
        "grpc_status",
        "headers",
        "responded",
        "route",
        "span",
        "status",
        "timeout",
        "timer",
        "to_down",
        "to_up",
        "up",
        "up_sid",
    )

    def __init__(
        self,
        down: H2Side,
        down_sid: int,
        route: Route,
        span: HopSpan,
        headers: list[Header],
        grpc: bool,
        timeout: float,
        deadlines: Deadlines,
    ) -> None:
        self.down: H2Side | None = down
        self.down_sid = down_sid
        self.route = route
        self.span: HopSpan | None = span
        self.headers = headers  # the edited request head, until sent upstream
        self.grpc = grpc
        self.up: H2Side | None = None
        self.up_sid = 0
        self.to_up = _Direction()
        self.to_down = _Direction()
        self.responded = False
        self.status = 0
        self.grpc_status = -1
        self.bytes_down = 0
        self.timeout = timeout  # for the response head, once the request is sent (not gRPC)
        self.deadlines = deadlines  # the downstream connection's
        self.timer = 0  # its token there, 0: none

    # opening the upstream stream

    def attach(self, up: H2Side) -> bool:
        """Open the upstream stream on `up`; False when `up` turned out to be full."""
        sid = up.conn.get_next_available_stream_id()
        to_up = self.to_up
        end = to_up.end and not to_up.chunks and to_up.trailers is None
        try:
            up.conn.send_headers(sid, self.headers, end_stream=end)
        except h2.exceptions.TooManyStreamsError:
            return False
        self.up, self.up_sid = up, sid
        up.pairs[sid] = self
        up.active += 1
        to_up.ended_sent = end
        self.headers = []
        up.mark_dirty()
        self._pump(up, sid, to_up, self.down, self.down_sid)
        return True

    async def connect(self) -> None:
        """Wait for an upstream connection (none had a free slot), then open the stream."""
        while self.down is not None:
            try:
                up = await self.route.open_upstream()
            except Exception as exc:
                if self.down is not None and not self.responded:
                    self.answer(self.route.upstream_failed(exc), str(exc) or type(exc).__name__)
                flush_dirty()
                return
            if self.down is None:
                return  # the caller went away meanwhile
            if self.attach(up):
                flush_dirty()
                return

    # events from either side (called by H2Side)

    def data(self, side: H2Side, data: bytes, flow: int, ended: bool) -> None:
        if side is self.down:
            direction, target, sid = self.to_up, self.up, self.up_sid
        else:
            direction, target, sid = self.to_down, self.down, self.down_sid
            self.bytes_down += len(data)
        if flow > len(data):  # padding: nothing to hand on, credited at once
            direction.credit += flow - len(data)
        if data:
            direction.chunks.append(data)
        if ended:  # END_STREAM on this DATA frame: passed on with the last bytes
            direction.end = True
        if target is not None:
            self._pump(target, sid, direction, side, self._sid_on(side))

    def ended(self, side: H2Side) -> None:
        direction = self.to_up if side is self.down else self.to_down
        direction.end = True
        self._after_input(side, direction)

    def trailers(self, side: H2Side, headers: list[Header]) -> None:
        if side is self.up and response_problem(headers, trailers=True) is not None:
            self._fail_response(f"bad trailers: {response_problem(headers, trailers=True)}")
            return
        direction = self.to_up if side is self.down else self.to_down
        direction.trailers = headers
        direction.end = True
        if side is self.up:
            self.grpc_status = grpc_status_of(headers)
        self._after_input(side, direction)

    def response(self, headers: list[Header], ended: bool) -> None:
        problem = response_problem(headers)
        if problem is not None:
            self._fail_response(problem)
            return
        down = self.down
        if down is None:
            return
        self.responded = True
        self.timeout = 0.0  # answered before the request ended: no timer to start
        if not self.grpc:  # a gRPC deadline lasts until the call ends
            self._stop_timer()
        self.status = status_of(headers)
        self.grpc_status = grpc_status_of(headers)  # a trailers-only answer carries it here
        if ended:  # a trailers-only answer stays one HEADERS frame with END_STREAM
            self.to_down.end = self.to_down.ended_sent = True
        try:
            down.conn.send_headers(self.down_sid, headers, end_stream=ended)
        except h2.exceptions.StreamClosedError:
            return
        down.mark_dirty()
        if ended and self.to_up.ended_sent:
            self._complete()

    def informational(self, headers: list[Header]) -> None:
        if self.down is not None and response_problem(headers) is None:
            with contextlib.suppress(h2.exceptions.StreamClosedError):
                self.down.conn.send_headers(self.down_sid, headers)
                self.down.mark_dirty()

    def window_opened(self, side: H2Side) -> None:
        if side is self.up and self.up is not None:
            self._pump(self.up, self.up_sid, self.to_up, self.down, self.down_sid)
        elif side is self.down and self.down is not None and self.up is not None:
            self._pump(self.down, self.down_sid, self.to_down, self.up, self.up_sid)

    def reset(self, side: H2Side, code: int) -> None:
        """`side` reset its stream (or refused it, GOAWAY): the other one is reset alike."""
        if side is self.down:
            self._detach_down()
            if self.up is not None:
                self._reset_up(code)
            self._finish(0 if not self.responded else self.status, "downstream reset")
            return
        self._detach_up()
        if self.down is not None:
            self._reset_down(code)
        self._finish(self.status, f"upstream reset (HTTP/2 error {code})")

    def side_lost(self, side: H2Side) -> None:
        """`side`'s connection is gone with this stream open."""
        if side is self.down:
            self._detach_down()
            if self.up is not None:
                self._reset_up(_CANCEL)
            self._finish(self.status, "downstream connection lost")
            return
        self._detach_up()
        if self.down is None:
            return
        if not self.responded:
            reason = "upstream reset before responding"
            self.answer(self.route.upstream_failed(ConnectionResetError(reason)), reason)
        else:
            self._reset_down(_INTERNAL_ERROR)
            self._finish(self.status, "upstream connection lost")

    # answers

    def answer(self, reply: LocalReply, error: str) -> None:
        """The sidecar's own answer on the downstream stream (before any response began)."""
        down = self.down
        if down is None:
            return
        headers, body = local_reply(reply, self.grpc)
        with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            down.conn.send_headers(self.down_sid, headers, end_stream=not body)
            if body:
                down.conn.send_data(self.down_sid, body, end_stream=True)
            if not self.to_up.end:  # the caller is still sending: it may stop (RFC 9113 8.1)
                down.conn.reset_stream(self.down_sid, h2.errors.ErrorCodes.NO_ERROR)
        down.mark_dirty()
        self.responded = True
        if self.grpc:
            self.status, self.grpc_status = 200, reply.grpc_status
        else:
            self.status = reply.status
        self.bytes_down += len(body)
        self._detach_down()
        if self.up is not None:
            self._reset_up(_CANCEL)
        self._finish(self.status, error)

    def _fail_response(self, problem: str) -> None:
        log.info("bad HTTP/2 response from upstream: %s", problem)
        if self.up is not None:
            self._reset_up(_PROTOCOL_ERROR)
        if not self.responded:
            self.answer(bad_response(problem), problem)
        else:
            if self.down is not None:
                self._reset_down(_INTERNAL_ERROR)
            self._finish(self.status, problem)

    # moving bytes

    def _sid_on(self, side: H2Side) -> int:
        return self.down_sid if side is self.down else self.up_sid

    def _after_input(self, side: H2Side, direction: _Direction) -> None:
        if side is self.down:
            if self.up is not None:
                self._pump(self.up, self.up_sid, direction, side, self.down_sid)
        elif self.down is not None:
            self._pump(self.down, self.down_sid, direction, side, self.up_sid)

    def _pump(
        self,
        target: H2Side | None,
        sid: int,
        direction: _Direction,
        source: H2Side | None,
        source_sid: int,
    ) -> None:
        """Send what `direction` holds on `target`'s stream `sid`, as far as its window allows;
        credit the sender for what went; end the stream when everything has."""
        if target is None:
            return
        conn = target.conn
        chunks = direction.chunks
        try:
            while chunks:
                window = conn.local_flow_control_window(sid)
                if window <= 0:
                    break
                chunk = chunks[0]
                size = min(window, conn.max_outbound_frame_size)
                if len(chunk) <= size:
                    chunks.popleft()
                    last = not chunks and direction.end and direction.trailers is None
                    conn.send_data(sid, chunk, end_stream=last)
                    direction.ended_sent = last
                    direction.credit += len(chunk)
                else:
                    conn.send_data(sid, chunk[:size])
                    chunks[0] = chunk[size:]
                    direction.credit += size
            if not chunks and direction.end and not direction.ended_sent:
                if direction.trailers is not None:
                    conn.send_headers(sid, direction.trailers, end_stream=True)
                else:
                    conn.end_stream(sid)
                direction.ended_sent = True
        except h2.exceptions.StreamClosedError:
            chunks.clear()
            direction.ended_sent = True
        target.mark_dirty()
        if source is not None and direction.credit >= _CREDIT_BATCH and not direction.end:
            source.credit(source_sid, direction.credit)
            direction.credit = 0
        if self.to_up.ended_sent and self.to_down.ended_sent:
            self._complete()
        elif self.timeout > 0 and direction is self.to_up and direction.ended_sent:
            self.start_timer(self.timeout)  # the request is sent whole: its response is due

    # deadlines

    def start_timer(self, seconds: float) -> None:
        """Answer 504 (gRPC: UNAVAILABLE, as Envoy maps it) if no response has begun by then; a
        gRPC call still running by then is reset (CANCEL) both ways."""
        self.timeout = 0.0  # once
        self._stop_timer()
        self.timer = self.deadlines.add(seconds, self._timed_out)

    def _stop_timer(self) -> None:
        if self.timer:
            self.deadlines.cancel(self.timer)
            self.timer = 0

    def _timed_out(self) -> None:
        self.timer = 0
        if self.down is None:
            return
        if not self.responded:
            self.answer(upstream_timeout(), "upstream request timeout")
        else:
            if self.up is not None:
                self._reset_up(_CANCEL)
            self._reset_down(_CANCEL)
            self._finish(self.status, "grpc-timeout exceeded")
        flush_dirty()

    # the end

    def _complete(self) -> None:
        self._detach_down()
        self._detach_up()
        self._finish(self.status, None)

    def _detach_down(self) -> None:
        down, self.down = self.down, None
        if down is not None:
            down.forget(self.down_sid, opened_here=False)

    def _detach_up(self) -> None:
        up, self.up = self.up, None
        if up is not None:
            up.forget(self.up_sid, opened_here=True)

    def _reset_up(self, code: int) -> None:
        up = self.up
        self._detach_up()
        if up is not None and not up.closed:
            with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                up.conn.reset_stream(self.up_sid, code)
            up.mark_dirty()

    def _reset_down(self, code: int) -> None:
        down = self.down
        self._detach_down()
        if down is not None and not down.closed:
            with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                down.conn.reset_stream(self.down_sid, code)
            down.mark_dirty()

    def _finish(self, status: int, error: str | None) -> None:
        self._stop_timer()
        span, self.span = self.span, None
        if span is not None:
            span.finish(status, self.bytes_down, error, self.grpc_status if self.grpc else -1)


class Forwarder(Acceptor):
    """The acceptor of one downstream connection: each new stream checked, admitted, forwarded."""

    def __init__(self, route: Route, request_timeout: float = REQUEST_TIMEOUT_S) -> None:
        self.route = route
        self.request_timeout = request_timeout
        self.deadlines = Deadlines()

    def accept(self, side: H2Side, stream_id: int, headers: list[Header], ended: bool) -> None:
        problem = request_problem(headers)
        if problem is not None:
            log.info("HTTP/2 stream %d reset: malformed request: %s", stream_id, problem)
            with contextlib.suppress(h2.exceptions.StreamClosedError):
                side.conn.reset_stream(stream_id, _PROTOCOL_ERROR)
            return
        view = RequestView(headers)
        admission = self.route.admit(view)
        pair = StreamPair(
            side,
            stream_id,
            self.route,
            admission.span,
            headers,
            view.grpc,
            0.0 if view.grpc else self.request_timeout,
            self.deadlines,
        )
        side.pairs[stream_id] = pair
        pair.to_up.end = ended
        if admission.reply is not None:
            pair.answer(admission.reply, admission.reply.message)
            return
        pair.headers = edit(headers, admission.remove, admission.set_)
        if view.grpc:  # the caller's deadline, from now (Istio: grpc-timeout, no maximum)
            deadline = grpc_timeout_s(view.by_name.get("grpc-timeout", ""))
            if deadline is not None:
                pair.start_timer(deadline)
        up = self.route.take_upstream()
        if up is not None and pair.attach(up):
            return
        task = asyncio.get_running_loop().create_task(pair.connect())
        task.add_done_callback(_log_task_error)

    def connection_lost(self, side: H2Side) -> None:
        self.deadlines.close()
        self.route.closed()


def _log_task_error(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("HTTP/2 stream task failed: %s", task.exception())
