"""HTTP/2 header blocks as pure functions: detect the preface, check a request or response head,
read what the exchange needs, apply its edits, and write the sidecar's own answers. No sockets.

Header blocks are lists of (name, value) bytes as `h2` gives them (HPACK-decoded, not re-encoded:
what the sender sent is forwarded byte for byte). A malformed request is a stream error (RFC 9113
8.1.1): `request_problem` names the problem and only that stream is reset; `h2`'s own inbound
validation would make it a connection error and take every other stream down with it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Final
from urllib.parse import quote

import hpack

from sidecar_tls.answers import LocalReply

Header = tuple[bytes, bytes]
PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
GRPC_CONTENT_TYPE: Final = b"application/grpc"

# Connection-specific headers have no place in HTTP/2 (RFC 9113 8.2.2); `te` only as "trailers".
_CONNECTION_SPECIFIC: Final = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)
# Values new on every request (trace context, request ids, deadlines): in HPACK's dynamic table
# they would only push out the headers that do repeat, and make every lookup in it longer.
_PER_REQUEST: Final = frozenset(
    {b"traceparent", b"tracestate", b"b3", b"x-b3-traceid", b"x-b3-spanid", b"x-b3-parentspanid",
     b"x-b3-sampled", b"x-request-id", b"grpc-timeout"}
)  # fmt: skip
_REQUEST_PSEUDO: Final = frozenset({b":method", b":scheme", b":authority", b":path"})
# One C-level scan per name and per value: a set of bad bytes intersected with every field was
# ~7% of the inbound sidecar's CPU (`python -m bench grpc`, py-spy).
_BAD_NAME_BYTE: Final = re.compile(rb"[ \t\r\n\0:A-Z]")
_BAD_VALUE_BYTE: Final = re.compile(rb"[\r\n\0]")
_SPACE: Final = 0x20
_TAB: Final = 0x09
# grpc-message is percent-encoded: printable ASCII but '%' stays as it is (gRPC's HTTP/2 spec).
_GRPC_MESSAGE_SAFE: Final = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def looks_like_h2c(first_bytes: bytes) -> bool:
    """Whether a plaintext connection starts with the HTTP/2 connection preface (prior knowledge,
    as gRPC clients send it). `PRI` is no HTTP/1 method: the preface was chosen so."""
    n = min(len(first_bytes), len(PREFACE))
    return n >= 4 and first_bytes[:n] == PREFACE[:n]


def _field_problem(name: bytes, value: bytes) -> str | None:
    if not name:
        return "empty header name"
    if _BAD_NAME_BYTE.search(name, 1 if name[0] == 0x3A else 0) is not None:
        return f"header name {name[:40]!r} is not lowercase token characters"
    if _BAD_VALUE_BYTE.search(value) is not None:
        return f"header {name[:40]!r} has CR, LF or NUL in its value"
    if value and (value[0] in (_SPACE, _TAB) or value[-1] in (_SPACE, _TAB)):
        return f"header {name[:40]!r} has whitespace around its value"
    return None


def request_problem(headers: Sequence[Header]) -> str | None:
    """Why a request header block is malformed (RFC 9113 8.2, 8.3.1), or None."""
    seen: set[bytes] = set()
    regular = False
    length: bytes | None = None  # h2 would make a bad one a connection error
    for name, value in headers:
        problem = _field_problem(name, value)
        if problem is not None:
            return problem
        if name[0] == 0x3A:  # ':'
            if regular:
                return f"pseudo-header {name!r} after a regular header"
            if name not in _REQUEST_PSEUDO:
                return f"unknown request pseudo-header {name!r}"
            if name in seen:
                return f"pseudo-header {name!r} repeated"
            seen.add(name)
            continue
        regular = True
        if name in _CONNECTION_SPECIFIC:
            return f"connection-specific header {name.decode('latin-1')!r} in HTTP/2"
        if name == b"te" and value != b"trailers":
            return "te header other than trailers"
        if name == b"content-length":
            if not value.isdigit() or (length is not None and value != length):
                return f"bad or conflicting content-length {value[:20]!r}"
            length = value
    if b":method" not in seen:
        return "request without :method"
    method = next(v for n, v in headers if n == b":method")
    if method == b"CONNECT":
        return "CONNECT is not proxied" if b":authority" in seen else "CONNECT without :authority"
    if b":scheme" not in seen or b":path" not in seen:
        return "request without :scheme or :path"
    if not next(v for n, v in headers if n == b":path"):
        return "request with an empty :path"
    return None


def response_problem(headers: Sequence[Header], trailers: bool = False) -> str | None:
    """Why a response head (or trailer block) from upstream is malformed, or None."""
    status = False
    for name, value in headers:
        problem = _field_problem(name, value)
        if problem is not None:
            return problem
        if name[0] == 0x3A:
            if trailers or name != b":status" or status:
                return f"unexpected pseudo-header {name!r} in a response"
            if len(value) != 3 or not value.isdigit():
                return f"malformed :status {value[:10]!r}"
            status = True
        elif name in _CONNECTION_SPECIFIC:
            return f"connection-specific header {name.decode('latin-1')!r} in HTTP/2"
    if not trailers and not status:
        return "response without :status"
    return None


class RequestView:
    """What the exchange reads of a request head: method, path, authority, and the headers by
    (lowercase) name, first value of each."""

    __slots__ = ("authority", "by_name", "grpc", "method", "path")

    def __init__(self, headers: Sequence[Header]) -> None:
        by_name: dict[str, str] = {}
        for name, value in headers:
            key = name.decode("latin-1")
            if key not in by_name:
                by_name[key] = value.decode("latin-1")
        self.by_name = by_name
        self.method = by_name.get(":method", "")
        self.path = by_name.get(":path", "")
        # The Host header is the authority of an HTTP/1-style request carried over HTTP/2.
        self.authority = by_name.get(":authority") or by_name.get("host", "")
        self.grpc = by_name.get("content-type", "").startswith("application/grpc")


_GRPC_TIMEOUT_UNITS: Final = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def grpc_timeout_s(value: str) -> float | None:
    """A `grpc-timeout` value (1 to 8 digits and a unit: H M S m u n) in seconds; None when
    absent or malformed (ignored, as Envoy ignores it)."""
    digits, unit = value[:-1], value[-1:]
    if not 0 < len(digits) <= 8 or not digits.isdigit() or unit not in _GRPC_TIMEOUT_UNITS:
        return None
    return int(digits) * _GRPC_TIMEOUT_UNITS[unit]


def edit(
    headers: Sequence[Header], remove: Iterable[str], set_: Sequence[tuple[str, str]]
) -> list[Header]:
    """`headers` without the `remove` names and the `set_` names, then `set_` appended."""
    set_encoded = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in set_]
    drop = {n.encode("latin-1") for n in remove}
    drop.update(n for n, _ in set_encoded)
    if not drop:
        return list(headers)
    kept = [(n, v) for n, v in headers if n not in drop]
    kept.extend(set_encoded)
    return kept


class Encoder(hpack.Encoder):
    """The sidecar's HPACK encoder: per-request values (`_PER_REQUEST`) are sent as literals
    without indexing, and no literal is Huffman-coded. Huffman coding in Python costs more CPU
    per header block than the bytes it saves on a loopback or in-cluster hop (RFC 7541 leaves it
    to the encoder; the decoders at both ends take either).

    The blocks are hpack's own, byte for byte, but a field already in the tables is not searched
    for again: its encoding (an index) is remembered until the dynamic table changes (an
    insertion moves every dynamic index, a new size may evict), so a connection's repeated
    headers cost a dict lookup each. Fields the sender marked never-indexed stay so (RFC 7541
    7.1.3: an intermediary keeps that representation)."""

    def __init__(self) -> None:
        super().__init__()
        self._indexed: dict[tuple[bytes, bytes], bytes] = {}  # fields now in a table

    def encode(
        self,
        headers: Iterable[
            hpack.HeaderTuple
            | tuple[bytes | str, bytes | str]
            | tuple[bytes | str, bytes | str, bool | None]
        ]
        | dict[bytes | str, bytes | str],
        huffman: bool = True,
    ) -> bytes:
        if isinstance(headers, dict):
            return super().encode(headers, huffman)
        indexed = self._indexed
        block: list[bytes] = []
        if self.header_table.resized:
            block.append(self._encode_table_size_change())
            self.header_table.resized = False
            indexed.clear()
        for header in headers:
            name, value = _as_bytes(header[0]), _as_bytes(header[1])
            prefix = _NEVER_INDEXED_NAME.get(name)
            if prefix is not None:  # a per-request value: its name is in no table either
                block.append(prefix + _length(value) + value)
                continue
            if isinstance(header, hpack.NeverIndexedHeaderTuple) or (len(header) > 2 and header[2]):
                block.append(self.add((name, value), True))
                continue
            field = (name, value)
            encoded = indexed.get(field)
            if encoded is None:
                encoded = self.add(field, False)
                if encoded[0] & 0xC0 == 0x40:  # inserted: the dynamic indexes all moved
                    indexed.clear()
                else:
                    indexed[field] = encoded
            block.append(encoded)
        return b"".join(block)

    def add(self, to_add: tuple[bytes, bytes], sensitive: bool, huffman: bool = False) -> bytes:
        return super().add(to_add, sensitive or to_add[0] in _PER_REQUEST, False)


# A per-request field's representation up to its value: literal never indexed, literal name (none
# of them is in the static table, and they never enter the dynamic one).
_NEVER_INDEXED_NAME: Final = {name: b"\x10" + bytes([len(name)]) + name for name in _PER_REQUEST}


def _length(value: bytes) -> bytes:
    """A string literal's length (RFC 7541 5.1, 7-bit prefix, no Huffman)."""
    n = len(value)
    if n < 0x7F:
        return bytes([n])
    out = bytearray([0x7F])
    n -= 0x7F
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _as_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


def status_of(headers: Sequence[Header]) -> int:
    for name, value in headers:
        if name == b":status":
            return int(value)
    return 0


def grpc_status_of(headers: Sequence[Header]) -> int:
    """The `grpc-status` of a trailer block (or trailers-only response), -1 when absent."""
    for name, value in headers:
        if name == b"grpc-status":
            return int(value) if value.isdigit() and len(value) < 4 else 2  # UNKNOWN
    return -1


def local_reply(reply: LocalReply, grpc: bool) -> tuple[list[Header], bytes]:
    """The sidecar's own answer on one stream: (headers, body). A gRPC call gets Envoy's
    trailers-only answer (HTTP 200, grpc-status and grpc-message, no body); any other request the
    HTTP status with the message as a text body."""
    if grpc:
        message = quote(reply.message, safe=_GRPC_MESSAGE_SAFE).encode("ascii")
        return [
            (b":status", b"200"),
            (b"content-type", GRPC_CONTENT_TYPE),
            (b"grpc-status", str(reply.grpc_status).encode()),
            (b"grpc-message", message),
        ], b""
    body = reply.message.encode()
    return [
        (b":status", str(reply.status).encode()),
        (b"content-type", b"text/plain"),
        (b"content-length", str(len(body)).encode()),
    ], body
