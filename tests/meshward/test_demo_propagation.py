"""Trace-header forwarding and XFCC parsing, as data tables."""

from __future__ import annotations

import pytest

from meshward.demo.propagation import headers_to_forward, parse_xfcc, trace_id_of


def test_forwards_only_trace_headers_lowercased():
    incoming = {
        "Traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01",
        "X-B3-TraceId": "abc",
        "b3": "abc-def-1",
        "X-Request-Id": "r1",
        "Authorization": "secret",
        "x-forwarded-client-cert": "By=x",
        "Host": "reviews",
    }
    assert headers_to_forward(incoming) == {
        "x-request-id": "r1",
        "traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01",
        "x-b3-traceid": "abc",
        "b3": "abc-def-1",
    }


@pytest.mark.parametrize(
    ("headers", "trace_id"),
    [
        ({"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}, "1" * 32),
        ({"traceparent": "garbage", "x-b3-traceid": "b3id"}, "b3id"),
        (
            {"b3": "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"},
            "80f198ee56343ba864fe8b2a57d3eff7",
        ),
        ({"b3": "0"}, ""),
        ({}, ""),
    ],
)
def test_trace_id(headers, trace_id):
    assert trace_id_of(headers) == trace_id


@pytest.mark.parametrize(
    ("value", "fields"),
    [
        (
            "By=spiffe://td/ns/a/sa/b;Hash=00ff;URI=spiffe://td/ns/c/sa/d",
            {"By": "spiffe://td/ns/a/sa/b", "Hash": "00ff", "URI": "spiffe://td/ns/c/sa/d"},
        ),
        # Several elements: the last one is the hop nearest to the app.
        ("By=x;URI=first,By=y;URI=second", {"By": "y", "URI": "second"}),
        ('By="spiffe://q";URI="spiffe://r"', {"By": "spiffe://q", "URI": "spiffe://r"}),
        ("", {}),
        ("novalue", {}),
    ],
)
def test_parse_xfcc(value, fields):
    assert parse_xfcc(value) == fields
