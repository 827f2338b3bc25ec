"""HTTP/1.1 relayed with callbacks (asyncio.Protocol), not coroutines: the hot path.

`HttpRelay` is the downstream side of one connection. Per request it parses the head, lets its
`RelayHooks` rewrite (or answer) it, sends it with the body bytes as they arrive on an upstream
`UpstreamLink` (sidecar_tls.http1.upstream), and relays the response back, tracking only where
each body ends. No task switch per request; bytes go from one transport to the other inside
`data_received`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final, cast

from sidecar_tls.answers import (
    REQUEST_TIMEOUT_S,
    BadRequest,
    LocalReply,
    MalformedMessage,
    bad_request,
    bad_response,
    upstream_timeout,
)
from sidecar_tls.http1.body import BodyTracker
from sidecar_tls.http1.head import (
    MAX_HEAD_BYTES,
    Framing,
    ResponseHead,
    closing_response,
    local_response,
    parse_request_head,
    parse_response_head,
    rewrite_request,
)
from sidecar_tls.http1.upstream import READ_VIEW, RelayHooks, UpstreamLink, take_read
from sidecar_tls.telemetry.observe import DOWNSTREAM_CLOSED, HopSpan

log = logging.getLogger(__name__)

_PIPELINE_LIMIT: Final = 256 * 1024
_JOIN_LIMIT: Final = 16 * 1024
# A request without a body: a finished tracker, never fed, shared by all of them.
_NO_BODY: Final = BodyTracker(Framing.NONE)


class HttpRelay:
    """The downstream side of one connection. Reads arrive as bytes (`data_received`), right for
    plain TCP; over TLS use `TlsHttpRelay`."""

    def __init__(self, hooks: RelayHooks, request_timeout: float = REQUEST_TIMEOUT_S) -> None:
        self.hooks = hooks
        self.request_timeout = request_timeout  # for the response head, once the request is sent
        self._timer: asyncio.TimerHandle | None = None
        self.down: asyncio.Transport | None = None
        self.state = "pending"  # pending, head, connecting, body, response, tunnel, closed
        self.buf = bytearray()
        self._down_paused = False
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.up: UpstreamLink | None = None
        self._span: HopSpan | None = None
        self._request = b""
        self._method = ""
        self._client_keep_alive = True
        self._req: BodyTracker | None = None
        self._resp: BodyTracker | None = None
        self._resp_head: ResponseHead | None = None
        self._resp_buf = bytearray()
        self._reused = False
        self._retried = False
        self.draining = False  # the sidecar stops: the exchange in flight is the last one

    # downstream transport callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.down = cast(asyncio.Transport, transport)
        if self.state == "pending":
            self.pause_down()

    def start(self) -> None:
        """Begin relaying (after the caller checked the connection); buffered bytes are processed."""
        self.state = "head"
        self.resume_down()
        self._process()

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state == "head" and not self.buf:
            self._process(data)  # the common case: parsed where it lies, not copied first
        elif state == "body":
            self._forward_request_body(data)
        elif state == "tunnel":
            if self.up is not None and self.up.transport is not None:
                self.up.transport.write(data)
        else:
            self.buf += data
            if self.state == "head":
                self._process()
            elif len(self.buf) > _PIPELINE_LIMIT:
                self.pause_down()

    def eof_received(self) -> bool:
        return False  # the transport closes; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        was = self.state
        self.state = "closed"
        self._stop_timer()
        if self.up is not None:
            up, self.up = self.up, None
            up.owner = None
            up.close()  # mid-exchange: never reused
        if self._span is not None and was not in ("head", "pending"):
            # A response head already relayed is the status the client got (Envoy: that, + DC).
            head = self._resp_head
            self._span.finish(0 if head is None else head.status, 0, DOWNSTREAM_CLOSED)
            self._span = None
        if not self.done.done():
            self.done.set_result(None)

    def pause_down(self) -> None:
        if self.down is not None and not self._down_paused:
            self._down_paused = True
            self.down.pause_reading()

    def resume_down(self) -> None:
        # Only when paused: uvloop's TLS transport copies the context on every resume_reading.
        if self._down_paused and self.down is not None and not self.down.is_closing():
            self._down_paused = False
            self.down.resume_reading()

    def pause_writing(self) -> None:
        if self.up is not None and self.up.transport is not None:
            self.up.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.up is not None and self.up.transport is not None:
            self.up.transport.resume_reading()

    # requests

    def _process(self, data: bytes | None = None) -> None:
        """Handle the requests in `data` (fresh bytes, nothing buffered) or else in `self.buf`."""
        while self.state == "head":
            if data is not None:
                idx = data.find(b"\r\n\r\n")
                if idx < 0:
                    self.buf += data
                    data = None
                    continue
                end = idx + 4
                raw = data if end == len(data) else data[:end]
                if end < len(data):
                    self.buf += memoryview(data)[end:]  # pipelined: the rest waits its turn
                data = None
            else:
                if not self.buf:
                    return
                idx = self.buf.find(b"\r\n\r\n")
                if idx < 0:
                    if len(self.buf) > MAX_HEAD_BYTES:
                        self._answer_and_close(bad_request("request head too large"))
                    return
                raw = bytes(self.buf[: idx + 4])
                del self.buf[: idx + 4]
            try:
                head = parse_request_head(raw)
            except BadRequest as exc:
                self._answer_and_close(bad_request(str(exc)))
                return
            admission = self.hooks.prepare(head)
            length = head.body_length
            reply = admission.reply
            if reply is not None:
                assert self.down is not None
                answer = local_response(reply, close=self.draining)
                self.down.write(answer)
                admission.span.finish(reply.status, len(reply.message), reply.message)
                if length or not head.keep_alive or self.draining:
                    self._close_down()
                    return
                continue
            self._span = admission.span
            self._resp_head = None  # until this request's response head arrives
            self._request = rewrite_request(raw, head, admission.remove, admission.set_)
            self._method = head.method
            self._client_keep_alive = head.keep_alive
            if length == 0:
                self._req = _NO_BODY
            elif length < 0:
                self._req = BodyTracker(Framing.CHUNKED)
            else:
                self._req = BodyTracker(Framing.LENGTH, length)
            self._retried = False
            up = self.hooks.take_upstream()
            if up is None:
                self._connect()
                return
            self._reused = True
            self._send(up)

    def _connect(self) -> None:
        self.state = "connecting"
        self.pause_down()
        task = asyncio.get_running_loop().create_task(self._open_and_send())
        task.add_done_callback(_log_task_error)

    async def _open_and_send(self) -> None:
        try:
            up = await self.hooks.open_upstream()
        except Exception as exc:
            reply = self.hooks.upstream_failed(exc)
            if self._span is not None:
                self._span.finish(reply.status, 0, str(exc) or type(exc).__name__)
                self._span = None
            if self.state != "closed" and self.down is not None:
                self.down.write(local_response(reply, close=True))
                self._close_down()
            return
        if self.state == "closed":
            self.hooks.release_upstream(up, True)
            return
        self._reused = False
        self.resume_down()
        self._send(up)

    def _send(self, up: UpstreamLink) -> None:
        assert self._req is not None
        assert up.transport is not None
        self.up = up
        up.owner = self
        self._resp_head = None
        self._resp_buf.clear()
        if self.buf and not self._req.done:
            try:
                end = self._req.feed(self.buf)
            except MalformedMessage as exc:
                up.owner = None
                self.up = None
                self.hooks.release_upstream(up, True)  # nothing of this request was sent on it
                self._bad_request_body(str(exc))
                return
            body = bytes(self.buf[:end])
            del self.buf[:end]
            if len(body) > _JOIN_LIMIT:  # a large body already here: no copy to prepend the head
                up.transport.writelines((self._request, body))
            else:  # one write, one TLS record, for the usual small request
                up.transport.write(self._request + body)
        else:
            up.transport.write(self._request)
        if self._req.done:
            self._await_response()
        else:
            self.state = "body"

    def _forward_request_body(self, data: bytes) -> None:
        assert self._req is not None
        assert self.up is not None
        assert self.up.transport is not None
        try:
            end = self._req.feed(data)
        except MalformedMessage as exc:
            self._bad_request_body(str(exc))
            return
        self.up.transport.write(data[:end] if end < len(data) else data)
        if self._req.done:
            self._await_response()
            self.buf += data[end:]

    def _await_response(self) -> None:
        """The request is sent whole: its response head is due within the request timeout."""
        self.state = "response"
        if self._timer is None and self.request_timeout > 0:  # a retry keeps the first deadline
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.request_timeout, self._timed_out)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self._resp_head is None and self.state in ("response", "connecting"):
            log.info("no response within %gs: answered 504", self.request_timeout)
            self._abandon(upstream_timeout())

    # responses (called by the upstream link)

    def response_data(self, data: bytes) -> None:
        assert self.down is not None
        if self.state == "tunnel":  # after 101 Switching Protocols: bytes, both ways
            self.down.write(data)
            return
        if self._resp_head is not None:  # more of the body
            assert self._resp is not None
            try:
                end = self._resp.feed(data)
            except MalformedMessage as exc:
                self._fail_response(str(exc))
                return
            self.down.write(data if end == len(data) else data[:end])
            if self._resp.done:
                self._finish_exchange(reusable=end == len(data))
            return
        if self._resp_buf:
            self._resp_buf += data
            data = bytes(self._resp_buf)
            self._resp_buf.clear()
        start = 0  # where the head being looked for starts (after interim 1xx heads)
        while True:
            idx = data.find(b"\r\n\r\n", start)
            if idx < 0:
                if start:  # interim responses go to the client at once
                    self.down.write(data[:start])
                    data = data[start:]
                if len(data) > MAX_HEAD_BYTES:
                    self._fail_response("response head too large")
                    return
                self._resp_buf += data
                return
            head_end = idx + 4
            try:
                head = parse_response_head(data[start:head_end])
            except MalformedMessage as exc:
                self._fail_response(str(exc))
                return
            if 100 <= head.status < 200 and head.status != 101:
                start = head_end
                continue
            break
        self._stop_timer()
        self._resp_head = head
        if head.status == 101:
            self.state = "tunnel"
            self.down.write(data)
            if self._span is not None:
                self._span.finish(101, 0)
                self._span = None
            self.resume_down()
            if self.buf and self.up is not None and self.up.transport is not None:
                self.up.transport.write(bytes(self.buf))
                self.buf.clear()
            return
        tracker = self._resp = BodyTracker(*head.framing(self._method))
        try:
            end = tracker.feed(data, head_end)
        except MalformedMessage as exc:
            self._fail_response(str(exc))
            return
        out = data if end == len(data) else data[:end]
        if self.draining:  # the client learns this response is the connection's last
            out = out[:start] + closing_response(out[start:head_end]) + out[head_end:]
        self.down.write(out)
        if tracker.done:
            self._finish_exchange(reusable=end == len(data))

    def _finish_exchange(self, reusable: bool) -> None:
        head, tracker = self._resp_head, self._resp
        assert head is not None
        assert tracker is not None
        if self._span is not None:
            self._span.finish(head.status, tracker.total)
            self._span = None
        up, self.up = self.up, None
        close_client = not self._client_keep_alive or not head.keep_alive
        if up is not None:
            up.owner = None
            self.hooks.release_upstream(
                up, reusable and head.keep_alive and tracker.framing is not Framing.CLOSE
            )
        if close_client or tracker.framing is Framing.CLOSE or self.draining:
            self._close_down()
            return
        self.state = "head"
        self.resume_down()
        if self.buf:
            self._process()

    def upstream_lost(self, exc: Exception | None) -> None:
        up, self.up = self.up, None
        if up is not None:
            up.owner = None
        if self.state == "tunnel":
            self._close_down()
        elif self._resp_head is None:
            if (
                self._reused
                and not self._retried
                and self._req is not None
                and self._req.framing is Framing.NONE
                and self.state == "response"
            ):
                # A pooled connection the server had already closed: nothing of this request
                # reached an app, so send it once more on a fresh connection.
                self._retried = True
                self._connect()
                return
            reason = f"upstream reset before responding: {exc or 'connection closed'}"
            reply = self.hooks.upstream_failed(ConnectionResetError(reason))
            if self._span is not None:
                self._span.finish(reply.status, 0, reason)
                self._span = None
            if self.down is not None and self.state != "closed":
                self.down.write(local_response(reply, close=True))
            self._close_down()
        elif self._resp is not None and self._resp.framing is Framing.CLOSE:
            self._finish_exchange(reusable=False)
        else:
            if self._span is not None:
                self._span.finish(self._resp_head.status, 0, "upstream reset mid-response")
                self._span = None
            self._close_down()

    def _fail_response(self, reason: str) -> None:
        log.info("bad response from upstream: %s", reason)
        self._abandon(bad_response(reason))

    def _bad_request_body(self, reason: str) -> None:
        """A request body whose end cannot be told (bad chunking)."""
        log.info("bad request body from downstream: %s", reason)
        self._abandon(bad_request(reason))

    def _abandon(self, reply: LocalReply) -> None:
        """Neither connection can carry another message: the upstream is dropped, the span ends
        with `status`, the client gets `status` unless a response began, and it is closed."""
        if self.up is not None:
            self.up.owner = None
            self.up.close()
            self.up = None
        if self._span is not None:
            self._span.finish(reply.status, 0, reply.message)
            self._span = None
        if self._resp_head is None and self.state != "closed":
            self._answer_and_close(reply)
        else:
            self._close_down()

    def _answer_and_close(self, reply: LocalReply) -> None:
        if self.down is not None:
            self.down.write(local_response(reply, close=True))
        self._close_down()

    def drain(self) -> asyncio.Future[None]:
        """The sidecar stops (Envoy's drain; `sidecar_tls.draining`): an idle connection closes
        now; an exchange in flight finishes, its response says `connection: close`, and the
        connection closes after it (requests pipelined behind it are not answered: the client
        retries them elsewhere). Drained when the connection is gone."""
        self.draining = True
        if self.state in ("head", "pending") and not self.buf:
            self._close_down()
        return self.done

    def end(self) -> None:
        """The connection's task ends: cut what is still in flight, else close."""
        if not self.done.done():
            self.cut()
        elif self.down is not None and not self.down.is_closing():
            self.down.close()

    def cut(self) -> None:
        """The drain time is up: the connection ends now, whatever is in flight (and the upstream
        link with it: connection_lost)."""
        self.state = "closed"
        self._stop_timer()
        if self.down is not None:
            self.down.abort()  # not close(): a client that stopped reading could hold it open

    def _close_down(self) -> None:
        self.state = "closed"
        self._stop_timer()
        if self.down is not None:
            self.down.close()  # flushes what was written first


class TlsHttpRelay(HttpRelay):
    """A relay whose downstream is TLS: decrypted into the shared read buffer (see READ_VIEW)."""

    def get_buffer(self, sizehint: int) -> memoryview:
        return READ_VIEW

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(take_read(nbytes))


def _log_task_error(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("relay task failed: %s", task.exception())
