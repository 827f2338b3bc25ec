"""Where an HTTP/1.1 body ends in a byte stream, as a pure incremental state machine.

The callback-based relay forwards bytes as they arrive; it only needs to know where each message
ends (to reuse the connection and start the next one). `BodyTracker.feed(data)` says how many of
the given bytes still belong to the current body.
"""

from __future__ import annotations

from typing import Final

from sidecar_tls.answers import MalformedMessage
from sidecar_tls.http1.head import Framing, parse_chunk_size

_MAX_LINE: Final = 4096


class BodyTracker:
    def __init__(self, framing: Framing, length: int = 0) -> None:
        self.framing = framing
        self._remaining = length  # LENGTH: body bytes left; CHUNKED: chunk data + CRLF left
        self._line = bytearray()  # CHUNKED: partial size or trailer line
        self._state = "size" if framing is Framing.CHUNKED else "data"
        self.done = framing is Framing.NONE or (framing is Framing.LENGTH and length == 0)
        self.total = 0

    def feed(self, data: bytes | bytearray | memoryview, start: int = 0) -> int:
        """Consume data[start:]; return the index just past the body's last byte (== len(data)
        when all of it belongs to the body and more may follow). Raises MalformedMessage."""
        if self.done:
            return start
        if self.framing is Framing.CLOSE:
            self.total += len(data) - start
            return len(data)
        if self.framing is Framing.LENGTH:
            take = min(self._remaining, len(data) - start)
            self._remaining -= take
            self.total += take
            self.done = self._remaining == 0
            return start + take
        return self._feed_chunked(data, start)

    def _feed_chunked(self, data: bytes | bytearray | memoryview, i: int) -> int:
        n = len(data)
        while i < n and not self.done:
            if self._state == "data":
                take = min(self._remaining, n - i)
                self._remaining -= take
                i += take
                if self._remaining == 0:
                    self._state = "size"
                continue
            # size line or trailer line: up to CRLF
            j = bytes(data[i : min(n, i + _MAX_LINE)]).find(b"\n")
            if j < 0:
                self._line += data[i:n]
                if len(self._line) > _MAX_LINE:
                    raise MalformedMessage("chunked body line too long")
                return n
            self._line += data[i : i + j + 1]
            i += j + 1
            line = bytes(self._line)
            self._line.clear()
            if self._state == "size":
                size = parse_chunk_size(line)
                if size == 0:
                    self._state = "trailer"
                else:
                    self._remaining = size + 2  # data and its CRLF
                    self.total += size
                    self._state = "data"
            elif line in (b"\r\n", b"\n"):  # trailer: the blank line ends the message
                self.done = True
        return i
