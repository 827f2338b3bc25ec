"""The served mesh state: built purely, versioned by content, reloaded with last-good semantics."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from ca.mesh_state import MeshStateSource, build_mesh_state
from meshward_common.errors import ConfigError
from meshward_common.registry import parse_registry

REG = """workloads:
  - name: reviews-v1
    namespace: default
    serviceAccount: reviews
    node: node-1
    labels: {app: reviews}
    address: 10.0.0.5
    service: reviews
    ports: [9080]
    selector: {netns: mw-reviews, uids: [1337, 1000]}
"""
POLICY = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: default}
spec: {}
"""


def test_state_carries_workloads_with_ids_and_selectors() -> None:
    state = build_mesh_state(
        parse_registry(REG, "r"), {"a.yaml": POLICY}, "cluster.local", "istio-system"
    )
    (w,) = state.workloads
    assert w.spiffe_id == "spiffe://cluster.local/ns/default/sa/reviews"
    assert (w.netns, list(w.uids)) == ("mw-reviews", [1337, 1000])
    assert (w.address, w.service, list(w.ports), dict(w.labels)) == (
        "10.0.0.5", "reviews", [9080], {"app": "reviews"},
    )  # fmt: skip
    assert [(p.source, p.yaml) for p in state.policies] == [("a.yaml", POLICY)]
    assert state.root_namespace == "istio-system"
    assert state.trust_domain == "cluster.local"


def test_version_changes_iff_content_does() -> None:
    reg = parse_registry(REG, "r")
    a = build_mesh_state(reg, {}, "cluster.local", "istio-system")
    b = build_mesh_state(reg, {}, "cluster.local", "istio-system")
    c = build_mesh_state(reg, {"a.yaml": POLICY}, "cluster.local", "istio-system")
    assert a.version_info == b.version_info != c.version_info


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    reg = tmp_path / "registry.yaml"
    reg.write_text(REG)
    pol = tmp_path / "policies"
    pol.mkdir()
    (pol / "a.yaml").write_text(POLICY)
    return reg, pol


async def test_reload_keeps_last_good_registry_and_policy(
    files: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    reg, pol = files
    source = MeshStateSource(reg, pol, "cluster.local")
    source.load_initial()
    v1 = source.state.version_info
    assert len(source.state.policies) == 1

    reg.write_text(REG + "  - {name: x, namespace: default, serviceAccount: x, node: NODE}\n")
    with caplog.at_level(logging.ERROR):
        await source.poll_once()
    assert source.state.version_info == v1, "bad registry keeps the last good one"
    assert any("registry.yaml:11" in r.getMessage() for r in caplog.records)

    (pol / "b.yaml").write_text(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nspec:\n  action: MAYBE\n"
    )
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        await source.poll_once()
    assert [p.source for p in source.state.policies] == ["a.yaml"]
    assert any("b.yaml" in r.getMessage() for r in caplog.records)

    reg.write_text(REG.replace("node-1", "node-2"))
    (pol / "a.yaml").unlink()
    await source.poll_once()
    assert source.state.version_info != v1
    assert source.state.workloads[0].node == "node-2"
    assert list(source.state.policies) == []


def test_bad_registry_at_startup_is_an_error(tmp_path: Path) -> None:
    reg = tmp_path / "registry.yaml"
    reg.write_text("workloads:\n  - name: a\n")
    with pytest.raises(ConfigError, match=re.escape("registry.yaml:2")):
        MeshStateSource(reg, None, "cluster.local").load_initial()


def test_registry_for_another_trust_domain_is_refused(tmp_path: Path) -> None:
    reg = tmp_path / "registry.yaml"
    reg.write_text("trustDomain: other.org\nworkloads: []\n")
    with pytest.raises(ConfigError, match="does not match"):
        MeshStateSource(reg, None, "cluster.local").load_initial()
