"""HTTP/1.1 message heads, as pure functions: parse, frame, rewrite. No sockets.

The sidecar parses only what it needs per request: it checks that the head is well-formed (one
C-speed pass), reads the request line and the few headers it acts on (framing, keep-alive, upgrade,
host, trace context, x-request-id, XFCC), and relays everything else as bytes; the full header list
is parsed only when asked for (an authorization policy on headers, a sampled span). Rewrites splice
bytes instead of re-serialising the head. Anything that could let two parsers disagree about where
a message ends (Content-Length with Transfer-Encoding, conflicting lengths, a request body coding
other than chunked, obsolete line folding, bare CR/LF/NUL) is refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from enum import Enum
from typing import Final

from sidecar_tls.answers import BadRequest, BadResponse, LocalReply, MalformedMessage

MAX_HEAD_BYTES: Final = 64 * 1024

_TCHAR_RUN: Final = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REQUEST_LINE_RE: Final = re.compile(rf"({_TCHAR_RUN}) (\S+) HTTP/(1\.[01])")
_VERSIONS: Final = frozenset({"1.0", "1.1"})
# A header line; the lookahead leaves the CRLF for the next match to start from.
_HEADER_RE: Final = re.compile(rf"\r\n({_TCHAR_RUN}):[ \t]*([^\r\n]*?)[ \t]*(?=\r\n)")
_METHOD_PREFIX_RE: Final = re.compile(rb"[A-Z]{3,7} ")

# Headers that describe one connection, not the message (RFC 9110 7.6.1); not forwarded.
HOP_BY_HOP: Final = ("connection", "keep-alive", "proxy-connection")

# The headers the data path and its observers act on: found by one scan of the head.
WANTED: Final[frozenset[str]] = frozenset(
    {
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "host",
        "x-request-id",
        "x-forwarded-client-cert",
        "traceparent",
        "tracestate",
        "b3",
        "x-b3-traceid",
        "x-b3-spanid",
        "x-b3-parentspanid",
        "x-b3-sampled",
        "x-b3-flags",
        "x-client-trace-id",
        "x-envoy-force-trace",
    }
)


def _names_re(names: Iterable[str]) -> str:
    return "|".join(re.escape(n) for n in sorted(names, key=lambda n: (-len(n), n)))


_FRAMING_KEYS: Final = tuple(
    (name, f"\r\n{name}:") for name in ("connection", "content-length", "transfer-encoding")
)
_JOINED: Final = frozenset({"transfer-encoding", "connection"})  # list-valued: repeats are joined


class Framing(Enum):
    NONE = "none"  # no body
    LENGTH = "length"  # Content-Length bytes
    CHUNKED = "chunked"  # chunked transfer coding
    CLOSE = "close"  # until the connection closes (responses only)


Headers = list[tuple[str, str]]


class HeaderView(Mapping[str, str]):
    """A head's headers by lowercase name (first value of each): the wanted ones at once, the
    others parsed on first use."""

    __slots__ = ("_head", "wanted")

    def __init__(self, head: RequestHead) -> None:
        self._head = head
        self.wanted = head.found  # the WANTED headers present: a plain dict, for hot lookups

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        head = self._head
        value = head.found.get(name) if name in WANTED else head.all_lower().get(name)
        return default if value is None else value

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self._head.all_lower())

    def __len__(self) -> int:
        return len(self._head.all_lower())


class RequestHead:
    """A request head: its request line, framing, keep-alive, and the WANTED headers."""

    __slots__ = (
        "_all",
        "_line_end",
        "_lower",
        "_text",
        "body_length",
        "found",
        "keep_alive",
        "method",
        "target",
        "version",
    )

    def __init__(
        self,
        text: str,
        line_end: int,
        method: str,
        target: str,
        version: str,
        found: dict[str, str],
        body_length: int,
        keep_alive: bool,
    ) -> None:
        self._text = text
        self._line_end = line_end
        self.method = method
        self.target = target
        self.version = version  # "1.1" or "1.0"
        self.found = found  # lowercase name -> value, for WANTED names present
        self.body_length = body_length  # -1: chunked; 0: no body
        self.keep_alive = keep_alive
        self._all: Headers | None = None
        self._lower: dict[str, str] | None = None

    @property
    def headers(self) -> Headers:
        """Every header as (name, value), in order (parsed on first use)."""
        if self._all is None:
            self._all = _HEADER_RE.findall(self._text, self._line_end)
        return self._all

    def all_lower(self) -> dict[str, str]:
        if self._lower is None:
            self._lower = {n.lower(): v for n, v in reversed(self.headers)}  # first value wins
        return self._lower

    def get(self, name: str) -> str | None:
        name = name.lower()
        return self.found.get(name) if name in WANTED else self.all_lower().get(name)

    def has(self, name: str) -> bool:
        """Whether the header is present (`name` lowercase, as the data path's constants are)."""
        if name in self.found:
            return True
        return name not in WANTED and self.get(name) is not None

    @property
    def host(self) -> str:
        return self.found.get("host", "")

    @property
    def framing(self) -> tuple[Framing, int]:
        n = self.body_length
        if n < 0:
            return Framing.CHUNKED, 0
        return (Framing.LENGTH, n) if n else (Framing.NONE, 0)

    def lower_map(self) -> HeaderView:
        """Header names lowercased, first value of each (the observer contract), read lazily."""
        return HeaderView(self)


class ResponseHead:
    """A response head, as far as relaying it needs: status line, framing headers, keep-alive."""

    __slots__ = ("_framing", "_length", "found", "keep_alive", "reason", "status", "version")

    def __init__(
        self,
        version: str,
        status: int,
        reason: str,
        found: dict[str, str],
        framing: Framing,
        length: int,
        keep_alive: bool,
    ) -> None:
        self.version = version
        self.status = status
        self.reason = reason
        self.found = found
        self._framing = framing
        self._length = length
        self.keep_alive = keep_alive

    def get(self, name: str) -> str | None:
        return self.found.get(name.lower())

    def framing(self, request_method: str) -> tuple[Framing, int]:
        if request_method == "HEAD" or self.status in (204, 304) or 100 <= self.status < 200:
            return Framing.NONE, 0
        return self._framing, self._length


def looks_like_http(first_bytes: bytes) -> bool:
    """Protocol sniffing: does a connection start with an HTTP/1.x request line?"""
    return _METHOD_PREFIX_RE.match(first_bytes) is not None


def parse_request_head(data: bytes) -> RequestHead:
    """`data`: the head up to and including the blank line. Raises BadRequest (the sender's
    fault: requests come from downstream)."""
    try:
        return _parse_request_head(data)
    except BadRequest:
        raise
    except MalformedMessage as exc:
        raise BadRequest(str(exc)) from None


def _parse_request_head(data: bytes) -> RequestHead:
    text, line_end = _split_head(data)
    m = _REQUEST_LINE_RE.fullmatch(text, 0, line_end)
    if m is None:
        raise BadRequest(f"malformed HTTP request line {text[: min(line_end, 80)]!r}")
    found = _scan(text, line_end, WANTED)
    framing, length = _framing(found)
    if framing is Framing.CLOSE and "transfer-encoding" in found:
        # A request body runs to its length or its last chunk, never to the connection's end
        # (RFC 9112 6.3): another coding last means nobody can tell where the request ends.
        raise BadRequest("request Transfer-Encoding does not end with chunked")
    version = m.group(3)
    return RequestHead(
        text,
        line_end,
        m.group(1),
        m.group(2),
        version,
        found,
        -1 if framing is Framing.CHUNKED else length,
        _keep_alive(version, found.get("connection")),
    )


def parse_response_head(data: bytes) -> ResponseHead:
    """A response head, scanned only for what relaying it needs: status line, framing and
    keep-alive (the sidecar forwards the head's bytes unchanged, so nothing else is parsed).
    The framing headers are checked as strictly as a request's. Raises BadResponse (the
    upstream's fault, not the caller's)."""
    try:
        return _parse_response_head(data)
    except BadResponse:
        raise
    except MalformedMessage as exc:
        raise BadResponse(str(exc)) from None


def _parse_response_head(data: bytes) -> ResponseHead:
    text, line_end = _split_head(data)
    # `HTTP/1.x NNN[ reason]`, read by position: a regex's fixed cost is most of this line's.
    version = text[5:8]
    status = text[9:12]
    if (
        not text.startswith("HTTP/1.")
        or version not in _VERSIONS
        or text[8:9] != " "
        or not (status.isdigit() and status.isascii())
        or (line_end > 12 and text[12] != " ")
        or line_end < 12
    ):
        raise BadResponse(f"malformed HTTP status line {text[: min(line_end, 80)]!r}")
    reason = text[13:line_end]
    found = _find_framing(text, line_end)
    framing, length = _framing(found)
    return ResponseHead(
        version,
        int(status),
        reason,
        found,
        framing,
        length,
        _keep_alive(version, found.get("connection")),
    )


def rewrite_request(
    raw: bytes,
    head: RequestHead,
    remove: Iterable[str] = (),
    set_: Sequence[tuple[str, str]] = (),
) -> bytes:
    """The request head with `remove` dropped and `set_` replacing same-named headers, spliced
    from the original bytes (the request line and every other header are kept as they came)."""
    found = head.found  # names the data path passes are lowercase; WANTED ones are all in here
    present = [n for n in remove if n in found or (n not in WANTED and head.has(n))]
    present.extend([n for n, _ in set_ if n in found or (n not in WANTED and head.has(n))])
    if not set_ and not present:
        return raw
    kept = _remover(frozenset(n.lower() for n in present)).sub(b"", raw) if present else raw
    if not set_:
        return kept
    # "name: value" lines joined in C (no string built per header in Python code)
    extra = ("\r\n".join(map(": ".join, set_)) + "\r\n").encode("latin-1")
    return kept[:-2] + extra + b"\r\n"


_REMOVERS: Final[dict[frozenset[str], re.Pattern[bytes]]] = {}


def _remover(names: frozenset[str]) -> re.Pattern[bytes]:
    """A pattern deleting the header lines named `names` (compiled once per set of names)."""
    pattern = _REMOVERS.get(names)
    if pattern is None:
        alternatives = _names_re(names).encode("latin-1")
        pattern = re.compile(rb"\r\n(?:" + alternatives + rb"):[^\r\n]*(?=\r\n)", re.I)
        if len(_REMOVERS) < 256:
            _REMOVERS[names] = pattern
    return pattern


def closing_response(raw: bytes) -> bytes:
    """A response head (its bytes, up to the blank line) saying `connection: close` instead of
    whatever connection headers it had: the last response on a draining connection."""
    kept = _remover(frozenset(HOP_BY_HOP)).sub(b"", raw)
    return kept[:-2] + b"connection: close\r\n\r\n"


def local_response(reply: LocalReply, close: bool = False) -> bytes:
    """One of the sidecar's own answers (sidecar_tls.answers) as a complete HTTP/1.1 response."""
    payload = reply.message.encode()
    head = (
        f"HTTP/1.1 {reply.status} {reply.phrase}\r\ncontent-type: text/plain\r\n"
        f"content-length: {len(payload)}\r\n" + ("connection: close\r\n" if close else "") + "\r\n"
    )
    return head.encode() + payload


def parse_chunk_size(line: bytes) -> int:
    """The size from a chunk-size line (`1a;ext=1\\r\\n`)."""
    size = line.split(b";", 1)[0].strip()
    if not size or len(size) > 16 or not all(c in b"0123456789abcdefABCDEF" for c in size):
        raise MalformedMessage(f"malformed chunk size line {line[:40]!r}")
    return int(size, 16)


def _split_head(data: bytes) -> tuple[str, int]:
    """The head as text (latin-1: one char per byte) and the end of its first line."""
    if len(data) > MAX_HEAD_BYTES:
        raise MalformedMessage(f"HTTP head larger than {MAX_HEAD_BYTES} bytes")
    if not data.endswith(b"\r\n\r\n"):
        raise MalformedMessage("HTTP head does not end with a blank line")
    # Bare CR or LF and NUL are where parsers disagree: refuse them. With every CRLF pair gone,
    # no CR, LF or NUL may be left (`13 in` looks for a byte value directly, a memchr).
    rest = data.replace(b"\r\n", b"")
    if 13 in rest or 10 in rest or 0 in rest:
        raise MalformedMessage("HTTP head has a bare CR, LF or NUL")
    text = data.decode("latin-1")
    return text, text.find("\r\n")  # found: the head ends with one


# Header names seen before, lowercased: names repeat across requests, so a dict lookup replaces
# the token check and the lowercasing. Bounded: names are the sender's to choose.
_NAMES: Final[dict[str, str]] = {}
_NAMES_MAX: Final = 4096
_TOKEN_RE: Final = re.compile(_TCHAR_RUN)


def _lower_name(name: str) -> str:
    lowered = _NAMES.get(name)
    if lowered is None:
        if _TOKEN_RE.fullmatch(name) is None:  # empty, or whitespace before the colon, ...
            raise MalformedMessage(f"malformed HTTP header name {name[:80]!r}")
        lowered = name.lower()
        if len(_NAMES) < _NAMES_MAX:
            _NAMES[name] = lowered
    return lowered


def _scan(text: str, line_end: int, wanted: frozenset[str]) -> dict[str, str]:
    """Check every header line is `token: value` (no folding: a line starting with whitespace
    has no token before its colon) and return the `wanted` ones by lowercase name, values
    trimmed. The lines are split at CRLF (C speed); only names are looked at per line."""
    found: dict[str, str] = {}
    if line_end + 4 == len(text):
        return found  # no header lines
    for line in text[line_end + 2 : -4].split("\r\n"):
        colon = line.find(":")
        if colon < 0:
            raise MalformedMessage(f"malformed HTTP header line {line[:80]!r}")
        name = _lower_name(line[:colon])
        if name in wanted:
            value = line[colon + 1 :].strip(" \t")
            if name in found:
                _add(found, name, value)  # a repeat
            else:
                found[name] = value
    return found


def _find_framing(text: str, line_end: int) -> dict[str, str]:
    """The framing headers of a response head, found with str.find in the lowercased head (C
    speed, a few passes; looking at every line costs more): only these decide where the
    response ends."""
    lowered = text.lower()  # latin-1: same length, so positions carry over to `text`
    found: dict[str, str] = {}
    for name, key in _FRAMING_KEYS:
        i = lowered.find(key, line_end)
        while i >= 0:
            start = i + len(key)
            end = text.find("\r\n", start)  # found: the head ends with CRLF CRLF
            if name in found:
                _add(found, name, text[start:end].strip(" \t"))  # a repeat
            else:
                found[name] = text[start:end].strip(" \t")
            i = lowered.find(key, end)
    return found


def _add(found: dict[str, str], name: str, value: str) -> None:
    """Record a header's value: the first one counts, list-valued framing headers are joined,
    and repeated Content-Length values must agree."""
    first = found.get(name)
    if first is None:
        found[name] = value
    elif name in _JOINED:
        found[name] = f"{first},{value}"
    elif name == "content-length" and value != first:
        raise MalformedMessage("message has conflicting Content-Length values")


def _framing(found: dict[str, str]) -> tuple[Framing, int]:
    te = found.get("transfer-encoding")
    cl = found.get("content-length")
    if te is not None:
        if cl is not None:
            raise MalformedMessage("message has both Content-Length and Transfer-Encoding")
        last = te.rsplit(",", 1)[-1].strip().lower()
        return (Framing.CHUNKED if last == "chunked" else Framing.CLOSE), 0
    if cl is not None:
        if not cl.isdigit() or len(cl) > 18 or not cl.isascii():
            raise MalformedMessage(f"Content-Length {cl!r} is not a number")
        length = int(cl)
        return (Framing.LENGTH, length) if length else (Framing.NONE, 0)
    return Framing.CLOSE, 0


def _keep_alive(version: str, connection: str | None) -> bool:
    if connection is None:
        return version == "1.1"
    single = connection.strip().lower()  # the usual one-token values, without a split
    if single == "close":
        return False
    if single == "keep-alive":
        return True
    tokens = {t.strip().lower() for t in connection.split(",")}
    if "close" in tokens:
        return False
    return version == "1.1" or "keep-alive" in tokens
