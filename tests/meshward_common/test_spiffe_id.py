"""SPIFFE ID parsing (SPIFFE-ID spec section 2) as a table of vectors, valid and invalid."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshward_common.errors import SpiffeIdError
from meshward_common.spiffe_id import (
    SpiffeId,
    control_plane_id,
    node_id,
    parse_node_id,
    parse_workload_id,
    workload_id,
)

VALID = [
    # (input, trust domain, path)
    ("spiffe://cluster.local", "cluster.local", ""),
    ("spiffe://cluster.local/ns/default/sa/reviews", "cluster.local", "/ns/default/sa/reviews"),
    ("spiffe://example.org/a", "example.org", "/a"),
    ("spiffe://td_with-dash.and_underscore/p", "td_with-dash.and_underscore", "/p"),
    ("spiffe://1.2.3.4/x", "1.2.3.4", "/x"),
    ("spiffe://example.org/A-Z_a.z-0.9", "example.org", "/A-Z_a.z-0.9"),
    ("spiffe://example.org/..a/b..", "example.org", "/..a/b.."),
    ("spiffe://x/" + "a" * 2000, "x", "/" + "a" * 2000),
]

INVALID = [
    # (input, a fragment of the error message)
    ("", "does not start with spiffe://"),
    ("http://cluster.local/ns/a", "does not start with spiffe://"),
    ("SPIFFE://cluster.local/a", "does not start with spiffe://"),
    ("spiffe:///ns/a", "trust domain is empty"),
    ("spiffe://", "trust domain is empty"),
    ("spiffe://Cluster.Local/a", "lowercase"),
    ("spiffe://cluster.local:8080/a", "lowercase"),
    ("spiffe://user@cluster.local/a", "lowercase"),
    ("spiffe://cluster.local/", "trailing '/'"),
    ("spiffe://cluster.local/a/", "trailing '/'"),
    ("spiffe://cluster.local//a", "empty segment"),
    ("spiffe://cluster.local/./a", "'.' or '..'"),
    ("spiffe://cluster.local/a/..", "'.' or '..'"),
    ("spiffe://cluster.local/a b", "characters other than"),
    ("spiffe://cluster.local/a%20b", "characters other than"),
    ("spiffe://cluster.local/a?q=1", "characters other than"),
    ("spiffe://cluster.local/a#frag", "characters other than"),
    (
        "spiffe://cluster.local/ns/default\n",
        "characters other than",
    ),  # the spiffe package accepts this
    ("spiffe://" + "a" * 256 + "/x", "longer than 255"),
    ("spiffe://x/" + "a" * 2048, "longer than 2048"),
]


@pytest.mark.parametrize(("text", "td", "path"), VALID)
def test_valid_ids_parse_and_round_trip(text: str, td: str, path: str) -> None:
    sid = SpiffeId.parse(text)
    assert (sid.trust_domain, sid.path) == (td, path)
    assert str(sid) == text


@pytest.mark.parametrize(("text", "reason"), INVALID)
def test_invalid_ids_are_refused_with_the_reason(text: str, reason: str) -> None:
    with pytest.raises(SpiffeIdError, match=None) as info:
        SpiffeId.parse(text)
    assert reason in str(info.value)


def test_non_string_is_refused() -> None:
    with pytest.raises(SpiffeIdError):
        SpiffeId.parse(b"spiffe://x/a")  # type: ignore[arg-type]


def test_mesh_identities_have_their_documented_shapes() -> None:
    assert str(workload_id("cluster.local", "default", "reviews")) == (
        "spiffe://cluster.local/ns/default/sa/reviews"
    )
    assert str(node_id("cluster.local", "node-1")) == "spiffe://cluster.local/meshward/node/node-1"
    assert str(control_plane_id("cluster.local")) == "spiffe://cluster.local/meshward/control-plane"


def test_workload_and_node_ids_parse_back_and_never_confuse_each_other() -> None:
    w = workload_id("td", "ns1", "sa1")
    n = node_id("td", "node-7")
    assert parse_workload_id(w) == ("ns1", "sa1")
    assert parse_node_id(n) == "node-7"
    assert parse_workload_id(n) is None
    assert parse_node_id(w) is None
    assert parse_node_id(control_plane_id("td")) is None


@pytest.mark.parametrize("bad", ["Default", "-a", "a-", "a_b", "", "a/b", "a" * 254])
def test_names_inside_ids_follow_dns1123(bad: str) -> None:
    with pytest.raises(SpiffeIdError):
        workload_id("td", bad, "sa")
    with pytest.raises(SpiffeIdError):
        node_id("td", bad)


_SEG = st.text(alphabet="abcXYZ019._-", min_size=1, max_size=12).filter(
    lambda s: s not in (".", "..")
)


@given(st.text(max_size=80))
def test_any_string_parses_or_is_refused_with_a_spiffe_id_error(text: str) -> None:
    try:
        sid = SpiffeId.parse("spiffe://" + text)
    except SpiffeIdError:
        return
    assert str(sid) == "spiffe://" + text
    assert "\n" not in str(sid)
    assert " " not in str(sid)


@given(st.text(alphabet="abc019.-_", min_size=1, max_size=20), st.lists(_SEG, max_size=5))
def test_well_formed_ids_round_trip(td: str, segments: list[str]) -> None:
    text = "spiffe://" + td + "".join("/" + s for s in segments)
    sid = SpiffeId.parse(text)
    assert str(sid) == text
    assert sid.segments == tuple(segments)
