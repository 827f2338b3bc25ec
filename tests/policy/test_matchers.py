"""Path normalization as Envoy does it for Istio (RFC 3986 6.2.2), before any path matching."""

from __future__ import annotations

import pytest

from policy.matchers import normalize_path

CASES = [
    ("/", "/"),
    ("/a/b", "/a/b"),
    ("/a/./b", "/a/b"),
    ("/a/../b", "/b"),
    ("/public/../admin", "/admin"),
    ("/../admin", "/admin"),  # cannot climb above the root
    ("/a/b/..", "/a/"),
    ("/a/b/.", "/a/b/"),
    ("/%61dmin", "/admin"),  # unreserved characters are decoded
    ("/%2e%2e/admin", "/admin"),  # ... including dots, before dot segments go
    ("/a%2fb", "/a%2Fb"),  # a reserved '/' stays encoded (uppercased), not a separator
    ("/a/.../b", "/a/.../b"),  # only '.' and '..' are special
    ("/.hidden", "/.hidden"),
    ("/x?y=/../z", "/x"),  # the query is not part of the path
    ("/x#frag", "/x"),
]


@pytest.mark.parametrize(("target", "path"), CASES, ids=[c[0] for c in CASES])
def test_normalize_path(target: str, path: str) -> None:
    assert normalize_path(target) == path
