"""HTTP/1.1 message heads, as pure functions: parse, frame, rewrite. No sockets.

The sidecar parses only what it needs per request (request line, headers, body framing, keep-alive)
and relays bodies as bytes. Anything that could let two parsers disagree about where a message ends
(Content-Length with Transfer-Encoding, conflicting lengths, obsolete line folding) is refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

from meshward_common.errors import InvalidRequest

MAX_HEAD_BYTES = 64 * 1024

_TCHAR_RUN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REQUEST_LINE_RE = re.compile(rf"({_TCHAR_RUN}) (\S+) HTTP/(1\.[01])")
_STATUS_LINE_RE = re.compile(r"HTTP/(1\.[01]) ([0-9]{3})(?: ([^\r\n]*))?")
_FRAMING_HEADER_RE = re.compile(
    r"\r\n(content-length|transfer-encoding|connection):[ \t]*([^\r\n]*?)[ \t]*(?=\r\n)",
    re.IGNORECASE,
)
# A header line; the lookahead leaves the CRLF for the next match to start from.
_HEADER_RE = re.compile(rf"\r\n({_TCHAR_RUN}):[ \t]*([^\r\n]*?)[ \t]*(?=\r\n)")
_METHOD_PREFIX_RE = re.compile(rb"[A-Z]{3,7} ")


# Headers that describe one connection, not the message (RFC 9110 7.6.1); not forwarded.
HOP_BY_HOP = ("connection", "keep-alive", "proxy-connection")


class Framing(Enum):
    NONE = "none"  # no body
    LENGTH = "length"  # Content-Length bytes
    CHUNKED = "chunked"  # chunked transfer coding
    CLOSE = "close"  # until the connection closes (responses only)


Headers = list[tuple[str, str]]


@dataclass(frozen=True)
class _Parsed:
    """What one pass over the header lines learns (names lowercased once)."""

    headers: Headers
    lower: dict[str, str]  # lowercased name -> first value
    framing: Framing
    length: int
    connection_tokens: frozenset[str]


@dataclass(frozen=True)
class RequestHead:
    method: str
    target: str
    version: str  # "1.1" or "1.0"
    headers: Headers
    parsed: _Parsed | None = None

    def _p(self) -> _Parsed:
        return self.parsed or _analyse(self.headers)

    def get(self, name: str) -> str | None:
        return self._p().lower.get(name.lower())

    @property
    def host(self) -> str:
        return self._p().lower.get("host", "")

    @property
    def framing(self) -> tuple[Framing, int]:
        p = self._p()
        return (Framing.NONE, 0) if p.framing is Framing.CLOSE else (p.framing, p.length)

    @property
    def keep_alive(self) -> bool:
        return _keep_alive(self.version, self._p().connection_tokens)

    def lower_map(self) -> dict[str, str]:
        """Header names lowercased, first value of each (the observer contract)."""
        return self._p().lower


@dataclass(frozen=True)
class ResponseHead:
    version: str
    status: int
    reason: str
    headers: Headers
    parsed: _Parsed | None = None

    def _p(self) -> _Parsed:
        return self.parsed or _analyse(self.headers)

    def get(self, name: str) -> str | None:
        return self._p().lower.get(name.lower())

    def framing(self, request_method: str) -> tuple[Framing, int]:
        if request_method == "HEAD" or self.status in (204, 304) or 100 <= self.status < 200:
            return Framing.NONE, 0
        p = self._p()
        return p.framing, p.length

    @property
    def keep_alive(self) -> bool:
        return _keep_alive(self.version, self._p().connection_tokens)


def looks_like_http(first_bytes: bytes) -> bool:
    """Protocol sniffing: does a connection start with an HTTP/1.x request line?"""
    return _METHOD_PREFIX_RE.match(first_bytes) is not None


def parse_request_head(data: bytes) -> RequestHead:
    """`data`: the head up to and including the blank line."""
    text, line_end = _split_head(data)
    m = _REQUEST_LINE_RE.fullmatch(text, 0, line_end)
    if m is None:
        raise InvalidRequest(f"malformed HTTP request line {text[: min(line_end, 80)]!r}")
    parsed = _analyse(_parse_headers(text, line_end))
    return RequestHead(m.group(1), m.group(2), m.group(3), parsed.headers, parsed)


def parse_response_head(data: bytes) -> ResponseHead:
    """A response head, scanned only for what relaying it needs: status line, framing and
    keep-alive (the sidecar forwards the head's bytes unchanged, so nothing else is parsed).
    The framing headers are checked as strictly as a request's."""
    text, line_end = _split_head(data)
    m = _STATUS_LINE_RE.fullmatch(text, 0, line_end)
    if m is None:
        raise InvalidRequest(f"malformed HTTP status line {text[: min(line_end, 80)]!r}")
    framing_headers: Headers = [
        (name, value) for name, value in _FRAMING_HEADER_RE.findall(text, line_end)
    ]
    parsed = _analyse(framing_headers)
    return ResponseHead(m.group(1), int(m.group(2)), m.group(3) or "", framing_headers, parsed)


def rewrite_headers(
    headers: Sequence[tuple[str, str]],
    remove: Iterable[str] = (),
    set_: Iterable[tuple[str, str]] = (),
) -> Headers:
    """Drop every header named in `remove` or `set_` (case-insensitive), then append `set_`."""
    setting = list(set_)
    dropped = {n.lower() for n in remove} | {n.lower() for n, _ in setting}
    out = [(n, v) for n, v in headers if n.lower() not in dropped]
    out.extend(setting)
    return out


def rewrite_request(
    raw: bytes,
    head: RequestHead,
    remove: Iterable[str] = (),
    set_: Sequence[tuple[str, str]] = (),
) -> bytes:
    """The request head with `remove` dropped and `set_` replacing same-named headers.

    Fast path: when none of those names is present, the original bytes are kept and the new
    headers appended before the blank line (no re-serialization)."""
    present = head.lower_map()
    if not any(n in present for n in remove) and not any(n.lower() in present for n, _ in set_):
        if not set_:
            return raw
        extra = "".join(f"{n}: {v}\r\n" for n, v in set_).encode("latin-1")
        return raw[:-2] + extra + b"\r\n"
    return serialize_request(head, rewrite_headers(head.headers, remove, set_))


def serialize_request(head: RequestHead, headers: Sequence[tuple[str, str]] | None = None) -> bytes:
    lines = [f"{head.method} {head.target} HTTP/{head.version}"]
    lines.extend(f"{n}: {v}" for n, v in (head.headers if headers is None else headers))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def serialize_response(head: ResponseHead) -> bytes:
    lines = [f"HTTP/{head.version} {head.status} {head.reason}"]
    lines.extend(f"{n}: {v}" for n, v in head.headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def simple_response(status: int, reason: str, body: str, close: bool = False) -> bytes:
    """A complete small response the sidecar itself answers with (403, 502, 503)."""
    payload = body.encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain\r\n"
        f"content-length: {len(payload)}\r\n" + ("connection: close\r\n" if close else "") + "\r\n"
    )
    return head.encode() + payload


def parse_chunk_size(line: bytes) -> int:
    """The size from a chunk-size line (`1a;ext=1\\r\\n`)."""
    size = line.split(b";", 1)[0].strip()
    if not size or len(size) > 16 or not all(c in b"0123456789abcdefABCDEF" for c in size):
        raise InvalidRequest(f"malformed chunk size line {line[:40]!r}")
    return int(size, 16)


def _split_head(data: bytes) -> tuple[str, int]:
    """The head as text (latin-1: one char per byte) and the end of its first line."""
    if len(data) > MAX_HEAD_BYTES:
        raise InvalidRequest(f"HTTP head larger than {MAX_HEAD_BYTES} bytes")
    if not data.endswith(b"\r\n\r\n"):
        raise InvalidRequest("HTTP head does not end with a blank line")
    # Bare CR or LF and NUL are where parsers disagree: refuse them (three C-speed scans).
    crlf = data.count(b"\r\n")
    if data.count(b"\n") != crlf or data.count(b"\r") != crlf or b"\x00" in data:
        raise InvalidRequest("HTTP head has a bare CR, LF or NUL")
    text = data.decode("latin-1")
    return text, text.index("\r\n")


def _parse_headers(text: str, line_end: int) -> Headers:
    # One regex pass in C instead of a Python loop per line; every line must match, so a
    # line that does not (no colon, bad name, folding) is caught by the count.
    headers: Headers = _HEADER_RE.findall(text, line_end)
    if len(headers) != text.count("\r\n") - 2:
        for line in text[line_end + 2 : -4].split("\r\n"):
            if _HEADER_RE.fullmatch("\r\n" + line + "\r\n") is None:
                raise InvalidRequest(f"malformed HTTP header line {line[:80]!r}")
        raise InvalidRequest("malformed HTTP header block")
    return headers


def _analyse(headers: Headers) -> _Parsed:
    lower = {n.lower(): v for n, v in reversed(headers)}  # reversed: the first value wins
    te = lower.get("transfer-encoding")
    cl = lower.get("content-length")
    conn = lower.get("connection")
    if te is not None or cl is not None or conn is not None:
        # Rare names seen more than once: gather every value (only when one is present).
        lengths = {v for n, v in headers if cl is not None and n.lower() == "content-length"}
        if te is not None:
            te = ",".join(v for n, v in headers if n.lower() == "transfer-encoding")
        if conn is not None:
            conn = ",".join(v for n, v in headers if n.lower() == "connection")
    else:
        lengths = set()
    if lengths and te is not None:
        raise InvalidRequest("message has both Content-Length and Transfer-Encoding")
    if len(lengths) > 1:
        raise InvalidRequest("message has conflicting Content-Length values")
    framing, length = Framing.CLOSE, 0
    if te is not None:
        codings = [c.strip().lower() for c in te.split(",")]
        framing = Framing.CHUNKED if codings[-1] == "chunked" else Framing.CLOSE
    elif cl is not None:
        if not cl.isdigit() or len(cl) > 18:
            raise InvalidRequest(f"Content-Length {cl!r} is not a number")
        length = int(cl)
        framing = Framing.LENGTH if length else Framing.NONE
    tokens = frozenset(t.strip().lower() for t in conn.split(",")) if conn else frozenset()
    return _Parsed(headers, lower, framing, length, tokens)


def _keep_alive(version: str, tokens: frozenset[str]) -> bool:
    if "close" in tokens:
        return False
    return version == "1.1" or "keep-alive" in tokens
