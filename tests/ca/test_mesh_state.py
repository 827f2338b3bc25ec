"""The served mesh state: built purely, versioned by content, reloaded with last-good semantics."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from pathlib import Path

import pytest

from ca.mesh_state import MeshStateSource, build_mesh_state
from meshward_common.errors import ConfigError
from meshward_common.limits import MESH_STATE_MAX_BYTES
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


def big_policy(name: str, principals: int) -> str:
    listed = "".join(
        f"        - cluster.local/ns/default/sa/caller-{i:06d}\n" for i in range(principals)
    )
    return (
        f"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        f"metadata: {{name: {name}, namespace: default}}\n"
        f"spec:\n  rules:\n  - from:\n    - source:\n        principals:\n{listed}"
    )


async def test_files_are_read_and_parsed_off_the_event_loop(
    files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A parse that only ends when the event loop runs something else: it does iff the parse is
    # not on the loop (the control plane keeps serving while a slow file is read).
    import ca.mesh_state as mesh_state

    reg, pol = files
    source = MeshStateSource(reg, pol, "cluster.local")
    source.load_initial()
    entered, release = threading.Event(), threading.Event()
    released_in_time: list[bool] = []
    real_parse = mesh_state.parse_text

    def slow_parse(text: str, where: str) -> object:
        entered.set()
        released_in_time.append(release.wait(30))
        return real_parse(text, where)

    monkeypatch.setattr(mesh_state, "parse_text", slow_parse)
    (pol / "b.yaml").write_text(POLICY.replace("allow-all", "allow-b"))
    poll = asyncio.create_task(source.poll_once())
    for _ in range(3000):  # up to 30 s for the scan to reach the file
        if entered.is_set():
            break
        await asyncio.sleep(0.01)
    release.set()  # runs only if the loop is free while the file is parsed
    await poll
    assert released_in_time == [True]
    assert [p.source for p in source.state.policies] == ["a.yaml", "b.yaml"]


async def test_a_change_over_the_state_bound_is_refused_at_the_source_naming_its_file(
    files: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    reg, pol = files
    (pol / "b.yaml").write_text(POLICY.replace("allow-all", "allow-b"))
    big = big_policy("big", 200)
    everything = build_mesh_state(
        parse_registry(REG, "r"),
        {"a.yaml": POLICY, "b.yaml": POLICY.replace("allow-all", "allow-b"), "c.yaml": big},
        "cluster.local",
        "istio-system",
    ).ByteSize()
    # Exactly at the bound the state fits...
    exact = MeshStateSource(reg, pol, "cluster.local", max_state_bytes=everything)
    (pol / "c.yaml").write_text(big)
    exact.load_initial()
    assert [p.source for p in exact.state.policies] == ["a.yaml", "b.yaml", "c.yaml"]
    assert exact.state.ByteSize() == everything
    # ...one byte less and the file that would cross it is refused, by name; the rest is served.
    (pol / "c.yaml").unlink()
    source = MeshStateSource(reg, pol, "cluster.local", max_state_bytes=everything - 1)
    source.load_initial()
    v1 = source.state.version_info
    (pol / "c.yaml").write_text(big)
    with caplog.at_level(logging.ERROR):
        await source.poll_once()
    assert source.state.version_info == v1
    assert [r.getMessage() for r in caplog.records] == [
        f"policy refused, keeping the last good version: {pol / 'c.yaml'}:1: file: the mesh "
        f"state would exceed {everything - 1} bytes with it (the mesh state's bound, "
        "MESH_STATE_MAX_BYTES)"
    ]
    # Once there is room (b.yaml removed), a change to c.yaml is taken.
    (pol / "b.yaml").unlink()
    (pol / "c.yaml").write_text(big.replace("caller-000000", "caller-999999"))
    await source.poll_once()
    assert [p.source for p in source.state.policies] == ["a.yaml", "c.yaml"]
    assert source.state.ByteSize() <= everything - 1
    # A registry that would cross the bound is refused the same way, the last good one kept.
    grown = REG + "".join(
        f"  - {{name: w{i}, namespace: default, serviceAccount: w{i}, node: node-1}}\n"
        for i in range(50)
    )
    reg.write_text(grown)
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        await source.poll_once()
    assert len(source.state.workloads) == 1
    assert any(
        f"{reg}:1: registry: the mesh state would exceed" in r.getMessage() for r in caplog.records
    )
    # At startup there is nothing good to keep: a registry too large alone stops the start.
    with pytest.raises(ConfigError, match=re.escape(f"{reg}:1: registry: the mesh state would")):
        MeshStateSource(reg, pol, "cluster.local", max_state_bytes=2000).load_initial()


def test_the_bound_is_the_documented_one() -> None:
    assert MESH_STATE_MAX_BYTES == 16 * 1024 * 1024
    assert MeshStateSource(None, None, "cluster.local").max_state_bytes == MESH_STATE_MAX_BYTES


def test_bad_policy_files_at_startup_are_skipped_and_reported(
    files: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    reg, pol = files
    (pol / "api.yaml").write_text(
        "apiVersion: [a]\nkind: AuthorizationPolicy\nmetadata: {name: x}\n"
    )
    (pol / "int.yaml").write_text("apiVersion: !!int a\n")
    (pol / "deep.yaml").write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    with caplog.at_level(logging.ERROR):
        source = MeshStateSource(reg, pol, "cluster.local")
        source.load_initial()
    assert [p.source for p in source.state.policies] == ["a.yaml"]
    lines = sorted(r.getMessage() for r in caplog.records)
    assert lines == [
        f"policy refused, keeping the last good version: {pol / 'api.yaml'}:1: apiVersion: a "
        "list is not one of security.istio.io/v1, security.istio.io/v1beta1",
        f"policy refused, keeping the last good version: {pol / 'deep.yaml'}:1: yaml: nested "
        "deeper than 64 levels (the limit for policy files)",
        f"policy refused, keeping the last good version: {pol / 'int.yaml'}:1: yaml: !!int "
        "cannot hold 'a'",
    ]
