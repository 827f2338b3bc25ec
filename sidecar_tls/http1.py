"""HTTP/1.1 message heads, as pure functions: parse, frame, rewrite. No sockets.

The sidecar parses only what it needs per request (request line, headers, body framing, keep-alive)
and relays bodies as bytes. Anything that could let two parsers disagree about where a message ends
(Content-Length with Transfer-Encoding, conflicting lengths, obsolete line folding) is refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

from meshward_common.errors import InvalidRequest

MAX_HEAD_BYTES = 64 * 1024

_TOKEN_RE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_REQUEST_LINE_RE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) (\S+) HTTP/(1\.[01])")
_STATUS_LINE_RE = re.compile(rb"HTTP/(1\.[01]) ([0-9]{3})(?: ([^\r\n]*))?")
_METHOD_PREFIX_RE = re.compile(rb"[A-Z]{3,7} ")


class Framing(Enum):
    NONE = "none"  # no body
    LENGTH = "length"  # Content-Length bytes
    CHUNKED = "chunked"  # chunked transfer coding
    CLOSE = "close"  # until the connection closes (responses only)


Headers = list[tuple[str, str]]


@dataclass(frozen=True)
class RequestHead:
    method: str
    target: str
    version: str  # "1.1" or "1.0"
    headers: Headers

    def get(self, name: str) -> str | None:
        return _get(self.headers, name)

    @property
    def host(self) -> str:
        return self.get("host") or ""

    @property
    def framing(self) -> tuple[Framing, int]:
        framing, length = _body_framing(self.headers)
        return (Framing.NONE, 0) if framing is Framing.CLOSE else (framing, length)

    @property
    def keep_alive(self) -> bool:
        return _keep_alive(self.version, self.headers)

    def lower_map(self) -> dict[str, str]:
        """Header names lowercased, first value of each (the observer contract)."""
        out: dict[str, str] = {}
        for name, value in self.headers:
            out.setdefault(name.lower(), value)
        return out


@dataclass(frozen=True)
class ResponseHead:
    version: str
    status: int
    reason: str
    headers: Headers

    def get(self, name: str) -> str | None:
        return _get(self.headers, name)

    def framing(self, request_method: str) -> tuple[Framing, int]:
        if request_method == "HEAD" or self.status in (204, 304) or 100 <= self.status < 200:
            return Framing.NONE, 0
        return _body_framing(self.headers)

    @property
    def keep_alive(self) -> bool:
        return _keep_alive(self.version, self.headers)


def looks_like_http(first_bytes: bytes) -> bool:
    """Protocol sniffing: does a connection start with an HTTP/1.x request line?"""
    return _METHOD_PREFIX_RE.match(first_bytes) is not None


def parse_request_head(data: bytes) -> RequestHead:
    """`data`: the head up to and including the blank line."""
    lines = _split_head(data)
    m = _REQUEST_LINE_RE.fullmatch(lines[0])
    if m is None:
        raise InvalidRequest(f"malformed HTTP request line {lines[0][:80]!r}")
    head = RequestHead(
        m.group(1).decode("ascii"),
        m.group(2).decode("latin-1"),
        m.group(3).decode("ascii"),
        _parse_headers(lines[1:]),
    )
    _check_framing_headers(head.headers)
    return head


def parse_response_head(data: bytes) -> ResponseHead:
    lines = _split_head(data)
    m = _STATUS_LINE_RE.fullmatch(lines[0])
    if m is None:
        raise InvalidRequest(f"malformed HTTP status line {lines[0][:80]!r}")
    head = ResponseHead(
        m.group(1).decode("ascii"),
        int(m.group(2)),
        (m.group(3) or b"").decode("latin-1"),
        _parse_headers(lines[1:]),
    )
    _check_framing_headers(head.headers)
    return head


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
        f"content-length: {len(payload)}\r\n"
        + ("connection: close\r\n" if close else "")
        + "\r\n"
    )
    return head.encode() + payload


def parse_chunk_size(line: bytes) -> int:
    """The size from a chunk-size line (`1a;ext=1\\r\\n`)."""
    size = line.split(b";", 1)[0].strip()
    if not size or len(size) > 16 or not all(c in b"0123456789abcdefABCDEF" for c in size):
        raise InvalidRequest(f"malformed chunk size line {line[:40]!r}")
    return int(size, 16)


def _split_head(data: bytes) -> list[bytes]:
    if len(data) > MAX_HEAD_BYTES:
        raise InvalidRequest(f"HTTP head larger than {MAX_HEAD_BYTES} bytes")
    if not data.endswith(b"\r\n\r\n"):
        raise InvalidRequest("HTTP head does not end with a blank line")
    return data[:-4].split(b"\r\n")


def _parse_headers(lines: Sequence[bytes]) -> Headers:
    headers: Headers = []
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or _TOKEN_RE.fullmatch(name) is None:
            # Also catches obsolete line folding (a line starting with whitespace).
            raise InvalidRequest(f"malformed HTTP header line {line[:80]!r}")
        if b"\r" in value or b"\n" in value or b"\x00" in value:
            raise InvalidRequest(f"HTTP header {name!r} has a control character")
        headers.append((name.decode("ascii"), value.strip(b" \t").decode("latin-1")))
    return headers


def _get(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    lname = name.lower()
    for n, v in headers:
        if n.lower() == lname:
            return v
    return None


def _check_framing_headers(headers: Sequence[tuple[str, str]]) -> None:
    lengths = {v.strip() for n, v in headers if n.lower() == "content-length"}
    has_te = any(n.lower() == "transfer-encoding" for n, _ in headers)
    if lengths and has_te:
        raise InvalidRequest("message has both Content-Length and Transfer-Encoding")
    if len(lengths) > 1:
        raise InvalidRequest("message has conflicting Content-Length values")
    for value in lengths:
        if not value.isdigit() or len(value) > 18:
            raise InvalidRequest(f"Content-Length {value!r} is not a number")


def _body_framing(headers: Sequence[tuple[str, str]]) -> tuple[Framing, int]:
    te = _get(headers, "transfer-encoding")
    if te is not None:
        codings = [c.strip().lower() for c in te.split(",")]
        if codings[-1] != "chunked":
            return Framing.CLOSE, 0
        return Framing.CHUNKED, 0
    cl = _get(headers, "content-length")
    if cl is not None:
        n = int(cl)
        return (Framing.LENGTH, n) if n else (Framing.NONE, 0)
    return Framing.CLOSE, 0


def _keep_alive(version: str, headers: Sequence[tuple[str, str]]) -> bool:
    tokens = {
        t.strip().lower()
        for n, v in headers
        if n.lower() == "connection"
        for t in v.split(",")
    }
    if "close" in tokens:
        return False
    return version == "1.1" or "keep-alive" in tokens


def header_map_lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}
