"""HTTP/1.1 heads as data: what is parsed, what is refused, how heads are rewritten."""

from __future__ import annotations

import pytest

from meshward_common.errors import InvalidRequest
from sidecar_tls.answers import BadRequest, BadResponse, MalformedMessage
from sidecar_tls.http1 import head as http1
from sidecar_tls.http1.head import (
    Framing,
    closing_response,
    looks_like_http,
    parse_chunk_size,
    parse_request_head,
    parse_response_head,
    rewrite_request,
)

GET = b"GET /a?b=1 HTTP/1.1\r\nHost: reviews:9080\r\nX-Forwarded-Client-Cert: forged\r\n\r\n"


@pytest.mark.parametrize(
    ("raw", "framing", "keep_alive"),
    [
        (GET, (Framing.NONE, 0), True),
        (b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n", (Framing.LENGTH, 5), True),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", (Framing.CHUNKED, 0), True),
        (b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", (Framing.NONE, 0), False),
        (b"GET / HTTP/1.0\r\n\r\n", (Framing.NONE, 0), False),
        (b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", (Framing.NONE, 0), True),
    ],
)
def test_request_framing_and_keep_alive(raw: bytes, framing: tuple, keep_alive: bool) -> None:
    head = parse_request_head(raw)
    assert head.framing == framing
    assert head.keep_alive is keep_alive


def test_request_fields_and_lowercased_map() -> None:
    head = parse_request_head(GET)
    assert (head.method, head.target, head.version, head.host) == (
        "GET",
        "/a?b=1",
        "1.1",
        "reviews:9080",
    )
    assert head.lower_map()["x-forwarded-client-cert"] == "forged"
    assert head.get("HOST") == "reviews:9080"


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", "both"),
        (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", "conflicting"),
        (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", "not a number"),
        (b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n", "malformed HTTP header line"),
        (b"GET / HTTP/1.1\r\nX: a\nY: b\r\n\r\n", "bare CR"),
        (b"GET / HTTP/1.1\r\nX: a\x00\r\n\r\n", "NUL"),
        (b"GET / HTTP/1.1\r\nX: a\rY: b\r\n\r\n", "bare CR"),
        (b"GET / HTTP/1.1\r\nX: a\r\r\n\r\n", "bare CR"),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", "does not end with chunked"),
        (b"POST / HTTP/1.1\r\nContent-Length: \xb2\r\n\r\n", "not a number"),
        (b"GET / HTTP/2.0\r\n\r\n", "request line"),
        (b"GET / HTTP/1.1\r\nNo colon\r\n\r\n", "malformed HTTP header line"),
        (b"POST / HTTP/1.1\r\nContent-Length : 3\r\n\r\n", "malformed HTTP header name"),
        (b"GET / HTTP/1.1\r\nX: a\r\n b: c\r\n\r\n", "malformed HTTP header name"),
        (b"GET / HTTP/1.1\r\n: empty name\r\n\r\n", "malformed HTTP header name"),
        (b"GET / HTTP/1.1\r\n", "blank line"),
    ],
)
def test_ambiguous_or_malformed_requests_are_refused(raw: bytes, why: str) -> None:
    # The caller's fault: a BadRequest, which is an InvalidRequest (answered 400).
    with pytest.raises(BadRequest, match=why) as refused:
        parse_request_head(raw)
    assert isinstance(refused.value, InvalidRequest)


@pytest.mark.parametrize(
    ("raw", "method", "framing"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", "GET", (Framing.LENGTH, 2)),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", "HEAD", (Framing.NONE, 0)),
        (b"HTTP/1.1 204 No Content\r\n\r\n", "GET", (Framing.NONE, 0)),
        (b"HTTP/1.1 304 Not Modified\r\n\r\n", "GET", (Framing.NONE, 0)),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "GET", (Framing.CHUNKED, 0)),
        (b"HTTP/1.1 200 OK\r\n\r\n", "GET", (Framing.CLOSE, 0)),
        (b"HTTP/1.1 100 Continue\r\n\r\n", "POST", (Framing.NONE, 0)),
    ],
)
def test_response_framing_depends_on_status_and_method(
    raw: bytes, method: str, framing: tuple
) -> None:
    assert parse_response_head(raw).framing(method) == framing


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"HTTP/1.1 200 OK\r\nX: a\nContent-Length: 3\r\n\r\n", "bare CR"),
        (b"HTTP/1.1 200 OK\r\nX: \x00\r\n\r\n", "NUL"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", "conflicting"),
        (b"HTTP/1.1 2000 OK\r\n\r\n", "status line"),
        (b"HTTP/1.2 200 OK\r\n\r\n", "status line"),
        (b"HTTP/1.1 2x0 OK\r\n\r\n", "status line"),
        (b"HTTP/1.1  200 OK\r\n\r\n", "status line"),
        (b"HTTP/1.1 20\r\n\r\n", "status line"),
        (b"HTTP/2.0 200 OK\r\n\r\n", "status line"),
        (b"http/1.1 200 OK\r\n\r\n", "status line"),
    ],
)
def test_malformed_responses_are_refused(raw: bytes, why: str) -> None:
    # The upstream's fault, not the caller's (h11's Local/RemoteProtocolError): never an
    # InvalidRequest, which the relay would answer with 400 as if the caller had erred.
    with pytest.raises(BadResponse, match=why) as refused:
        parse_response_head(raw)
    assert not isinstance(refused.value, InvalidRequest)


@pytest.mark.parametrize(
    ("raw", "version", "status", "reason"),
    [
        (b"HTTP/1.1 200 OK\r\n\r\n", "1.1", 200, "OK"),
        (b"HTTP/1.0 404 Not Found\r\n\r\n", "1.0", 404, "Not Found"),
        (b"HTTP/1.1 204\r\n\r\n", "1.1", 204, ""),
        (b"HTTP/1.1 500 \r\n\r\n", "1.1", 500, ""),
    ],
)
def test_status_lines(raw: bytes, version: str, status: int, reason: str) -> None:
    head = parse_response_head(raw)
    assert (head.version, head.status, head.reason) == (version, status, reason)


def test_header_names_are_remembered_lowercased_only_when_valid_and_boundedly() -> None:
    names = http1._NAMES
    head = parse_request_head(b"GET / HTTP/1.1\r\nX-Remembered-Name: 1\r\n\r\n")
    assert head.get("x-remembered-name") == "1"
    assert names["X-Remembered-Name"] == "x-remembered-name"
    with pytest.raises(InvalidRequest):
        parse_request_head(b"GET / HTTP/1.1\r\nBad Name: 1\r\n\r\n")
    assert "Bad Name" not in names
    for i in range(http1._NAMES_MAX + 10):  # a sender inventing names cannot grow it unbounded
        parse_request_head(f"GET / HTTP/1.1\r\nX-{i}: 1\r\n\r\n".encode())
    assert len(names) <= http1._NAMES_MAX
    assert parse_request_head(b"GET / HTTP/1.1\r\nX-Late-Name: 2\r\n\r\n").get("x-late-name") == "2"


def test_rewrite_keeps_original_bytes_and_appends_when_nothing_is_replaced() -> None:
    raw = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    head = parse_request_head(raw)
    assert rewrite_request(raw, head) is raw
    out = rewrite_request(raw, head, ("connection",), [("traceparent", "00-1-2-01")])
    assert out == b"GET / HTTP/1.1\r\nHost: a\r\ntraceparent: 00-1-2-01\r\n\r\n"


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n"
        b"Keep-Alive: timeout=5\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nconnection: Close\r\nContent-Length: 2\r\n\r\n",
    ],
)
def test_a_draining_connections_last_response_says_close_once(raw: bytes) -> None:
    out = closing_response(raw)
    head = parse_response_head(out)
    assert not head.keep_alive
    assert out.lower().count(b"connection:") == 1
    assert b"keep-alive" not in out.lower()
    assert out.startswith(b"HTTP/1.1 200 OK\r\n")
    assert out.endswith(b"\r\nconnection: close\r\n\r\n")
    assert head.framing("GET") == (Framing.LENGTH, 2)


def test_rewrite_replaces_same_named_headers_case_insensitively() -> None:
    head = parse_request_head(GET)
    out = rewrite_request(
        GET, head, ("x-forwarded-client-cert",), [("x-forwarded-client-cert", "ours")]
    )
    reparsed = parse_request_head(out)
    values = [v for n, v in reparsed.headers if n.lower() == "x-forwarded-client-cert"]
    assert values == ["ours"]
    assert reparsed.target == "/a?b=1"


@pytest.mark.parametrize(
    ("first", "is_http"),
    [
        (b"GET / HT", True),
        (b"OPTIONS ", True),
        (b"\x16\x03\x01\x02", False),
        (b"hello\n", False),
        (b"", False),
    ],
)
def test_sniffing_http_from_the_first_bytes(first: bytes, is_http: bool) -> None:
    assert looks_like_http(first) is is_http


def test_chunk_size_lines() -> None:
    assert parse_chunk_size(b"1a;ext=1\r\n") == 26
    assert parse_chunk_size(b"0\r\n") == 0
    with pytest.raises(MalformedMessage):
        parse_chunk_size(b"zz\r\n")


def test_headers_the_sidecar_does_not_act_on_are_parsed_only_on_demand() -> None:
    head = parse_request_head(
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Version:  v2 \r\nx-version: v3\r\n\r\n"
    )
    view = head.lower_map()
    assert view.get("x-version") == "v2"  # the first value, trimmed
    assert "x-version" in view
    assert "absent" not in view
    assert dict(view) == {"host": "a", "x-version": "v2"}
    assert head.headers == [("Host", "a"), ("X-Version", "v2"), ("x-version", "v3")]


def test_rewrite_splices_bytes_leaving_every_other_line_as_it_came() -> None:
    raw = (
        b"GET /x HTTP/1.1\r\nHost:  a \r\nConnection: close\r\nX-Odd:\tvalue\r\n"
        b"TraceParent: old\r\n\r\n"
    )
    head = parse_request_head(raw)
    out = rewrite_request(raw, head, ("connection", "keep-alive"), [("traceparent", "new")])
    assert out == b"GET /x HTTP/1.1\r\nHost:  a \r\nX-Odd:\tvalue\r\ntraceparent: new\r\n\r\n"
