"""HTTP/2 header blocks: the sidecar's HPACK encoder (what is indexed, what is not, that any HPACK
decoder reads it) and the checks that make a request or response malformed."""

from __future__ import annotations

import hpack
import pytest

from sidecar_tls.http2.headers import Encoder, request_problem, response_problem

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


class _HpackEncoder(hpack.Encoder):
    """hpack's encoder with the sidecar's choices (per-request values never indexed, no
    Huffman) and none of its shortcuts: what every block must equal."""

    def add(self, to_add: tuple[bytes, bytes], sensitive: bool, huffman: bool = False) -> bytes:
        per_request = to_add[0] in {b"grpc-timeout", b"traceparent", b"x-request-id"}
        return super().add(to_add, sensitive or per_request, False)


def test_blocks_are_hpacks_own_through_insertions_evictions_and_resizes() -> None:
    ours, reference, decoder = Encoder(), _HpackEncoder(), hpack.Decoder()
    for n in range(80):
        headers: list[tuple[bytes, bytes]] = list(_request(n))
        if n % 4 == 0:  # a value that repeats, inserted again once evicted
            headers.append((b"x-user", f"user-{n % 7}".encode()))
        if n % 6 == 0:  # a new value (a 2-byte length) inserted, evicting others
            headers.append((b"x-long", b"v" * (100 + 50 * (n % 5)) + bytes([n])))
        if n % 9 == 0:
            headers.append(hpack.NeverIndexedHeaderTuple(b"authorization", b"secret"))
        if n % 10 == 3:  # the peer's SETTINGS_HEADER_TABLE_SIZE changes: entries evicted
            for encoder in (ours, reference):
                encoder.header_table_size = (100, 0, 4096)[n // 10 % 3]
        block = ours.encode(headers)
        assert block == reference.encode(headers), n
        assert [tuple(h) for h in decoder.decode(block, raw=True)] == headers
    ours.header_table_size = 4096
    ours.encode(CONSTANT)
    assert len(ours.encode(CONSTANT)) == len(CONSTANT)  # then the constant fields: an index each


def test_a_field_the_sender_never_indexed_is_never_indexed_onward() -> None:
    encoder, decoder = Encoder(), hpack.Decoder()
    field = hpack.NeverIndexedHeaderTuple(b"authorization", b"Bearer x")
    for _ in range(2):
        (decoded,) = decoder.decode(encoder.encode([field]), raw=True)
        assert not decoded.indexable
    assert not encoder.header_table.dynamic_entries


GOOD_REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/a"), (b"x-a", b"1")]


@pytest.mark.parametrize(
    ("field", "problem"),
    [
        ((b"", b"1"), "empty header name"),
        ((b"X-Upper", b"1"), "not lowercase token characters"),
        ((b"x a", b"1"), "not lowercase token characters"),
        ((b"x\ta", b"1"), "not lowercase token characters"),
        ((b"x:a", b"1"), "not lowercase token characters"),
        ((b"x\x00a", b"1"), "not lowercase token characters"),
        ((b"x-a", b"1\r\nx-b: 2"), "CR, LF or NUL"),
        ((b"x-a", b"1\n"), "CR, LF or NUL"),
        ((b"x-a", b"1\x002"), "CR, LF or NUL"),
        ((b"x-a", b" 1"), "whitespace around"),
        ((b"x-a", b"1\t"), "whitespace around"),
        ((b"connection", b"close"), "connection-specific"),
        ((b"te", b"gzip"), "te header other than trailers"),
        ((b"content-length", b"1x"), "content-length"),
    ],
)
def test_a_bad_field_makes_the_request_malformed_and_says_why(
    field: tuple[bytes, bytes], problem: str
) -> None:
    found = request_problem([*GOOD_REQUEST, field])
    assert found is not None
    assert problem in found


def test_well_formed_fields_pass_whatever_their_bytes() -> None:
    fields = [(b"x-a", b""), (b"x-b", b"a b\tc"), (b"x-c", b"\x80\xff%"), (b"te", b"trailers")]
    assert request_problem([*GOOD_REQUEST, *fields]) is None
    assert request_problem([(b":method", b"GET"), (b":Path", b"/")]) is not None  # pseudo too
    assert response_problem([(b":status", b"200"), (b"x-a", b" 1")]) is not None
    assert response_problem([(b":status", b"200"), *fields]) is None
    assert response_problem([(b"grpc-status", b"0"), (b"x-A", b"1")], trailers=True) is not None
