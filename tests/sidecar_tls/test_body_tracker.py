"""Body boundaries in a byte stream, fed whole or byte by byte."""

from __future__ import annotations

import pytest

from sidecar_tls.answers import MalformedMessage
from sidecar_tls.http1.body import BodyTracker
from sidecar_tls.http1.head import Framing

NEXT = b"GET /next HTTP/1.1\r\n\r\n"
CASES = [
    (Framing.LENGTH, 5, b"hello"),
    (Framing.NONE, 0, b""),
    (Framing.CHUNKED, 0, b"5\r\nhello\r\n1a;x=y\r\n" + b"z" * 26 + b"\r\n0\r\n\r\n"),
    (Framing.CHUNKED, 0, b"3\r\nabc\r\n0\r\nTrailer: 1\r\n\r\n"),
]


@pytest.mark.parametrize(("framing", "length", "body"), CASES)
def test_the_body_ends_exactly_where_the_next_message_starts(framing, length, body) -> None:
    tracker = BodyTracker(framing, length)
    data = body + NEXT
    end = tracker.feed(data)
    assert tracker.done
    assert data[end:] == NEXT


@pytest.mark.parametrize(("framing", "length", "body"), CASES)
def test_byte_by_byte_gives_the_same_boundary(framing, length, body) -> None:
    tracker = BodyTracker(framing, length)
    data = body + NEXT
    consumed = 0
    for i in range(len(data)):
        if tracker.done:
            break
        end = tracker.feed(data[i : i + 1])
        consumed += end
    assert tracker.done
    assert consumed == len(body)


def test_close_delimited_body_never_ends_by_itself() -> None:
    tracker = BodyTracker(Framing.CLOSE)
    assert tracker.feed(b"abc") == 3
    assert not tracker.done
    assert tracker.total == 3


def test_a_malformed_chunk_size_is_refused() -> None:
    with pytest.raises(MalformedMessage):
        BodyTracker(Framing.CHUNKED).feed(b"xyz\r\n")
