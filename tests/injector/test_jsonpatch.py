"""RFC 6902 patches: the diff applied to the old document gives the new one."""

from __future__ import annotations

import pytest

from injector import jsonpatch
from meshward_common.errors import InvalidRequest


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ({}, {"a": 1}),
        ({"a": 1}, {}),
        ({"a": [1, 2]}, {"a": [1, 2, 3, 4]}),
        ({"a": [1, 2]}, {"a": [2]}),
        ({"a": {"b/c": "x", "d~e": 1}}, {"a": {"b/c": "y", "d~e": 1, "f": None}}),
        ({"a": 1}, {"a": "1"}),
        ({"a": True}, {"a": 1}),
    ],
)
def test_diff_then_apply_round_trips(old: dict, new: dict) -> None:
    ops = jsonpatch.diff(old, new)
    assert jsonpatch.apply(old, ops) == new
    assert old == old  # unchanged input


def test_grown_lists_are_appends_and_keys_are_escaped() -> None:
    ops = jsonpatch.diff(
        {"spec": {"containers": [{"name": "app"}]}, "metadata": {"annotations": {}}},
        {
            "spec": {"containers": [{"name": "app"}, {"name": "istio-proxy"}]},
            "metadata": {"annotations": {"sidecar.istio.io/status": "{}"}},
        },
    )
    assert {"op": "add", "path": "/spec/containers/1", "value": {"name": "istio-proxy"}} in ops
    assert {
        "op": "add",
        "path": "/metadata/annotations/sidecar.istio.io~1status",
        "value": "{}",
    } in ops


def test_a_patch_that_does_not_fit_the_document_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="does not exist"):
        jsonpatch.apply({}, [{"op": "add", "path": "/a/b", "value": 1}])
    with pytest.raises(InvalidRequest, match="not supported"):
        jsonpatch.apply({"a": 1}, [{"op": "move", "path": "/a"}])
