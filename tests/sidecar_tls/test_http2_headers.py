"""The sidecar's HPACK encoder: what is indexed, what is not, and that any HPACK decoder reads it."""

from __future__ import annotations

import hpack

from sidecar_tls.http2.headers import Encoder

CONSTANT = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", b"/test.Echo/Echo"),
    (b":authority", b"ratings:9090"),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
]


def _request(n: int) -> list[tuple[bytes, bytes]]:
    return [
        *CONSTANT,
        (b"grpc-timeout", f"{19_999_000 + n}u".encode()),
        (b"traceparent", f"00-{n:032x}-{n:016x}-01".encode()),
        (b"x-request-id", f"{n:08x}-0000-4000-8000-000000000000".encode()),
    ]


def test_blocks_decode_to_what_was_encoded_with_per_request_values_never_indexed() -> None:
    encoder, decoder = Encoder(), hpack.Decoder()
    for n in range(3):
        decoded = decoder.decode(encoder.encode(_request(n)), raw=True)
        assert [tuple(h) for h in decoded] == _request(n)
        unindexed = {bytes(h[0]) for h in decoded if not h.indexable}
        assert unindexed == {b"grpc-timeout", b"traceparent", b"x-request-id"}


def test_per_request_values_stay_out_of_the_table_and_constant_ones_are_indexed() -> None:
    encoder = Encoder()
    first = encoder.encode(_request(1))
    second = encoder.encode(_request(2))
    names = {name for name, _ in encoder.header_table.dynamic_entries}
    assert {b":authority", b"content-type"} <= names
    assert not names & {b"grpc-timeout", b"traceparent", b"x-request-id"}
    # Then each constant header is one byte (an index), the per-request ones literals again.
    assert len(second) < len(first)
    assert len(encoder.encode(CONSTANT)) == len(CONSTANT)


def test_literals_are_sent_without_huffman_coding() -> None:
    block = Encoder().encode(_request(7))
    for name, value in _request(7):
        if name != b":method" and name != b":scheme":  # static-table entries are indexed
            assert value in block, name
