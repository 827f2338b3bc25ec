"""Directories of policy files: bad files contribute nothing; good ones still load."""

from __future__ import annotations

from pathlib import Path

import pytest

from policy.loader import load_paths, load_strict
from policy.parse import PolicyFileError

DENY_ALL = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-all, namespace: foo}\nspec:\n  action: DENY\n  rules: [{}]\n"


def test_directory_loads_yaml_files_and_reports_bad_ones(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(DENY_ALL)
    (tmp_path / "b.yml").write_text(DENY_ALL.replace("deny-all", "other"))
    (tmp_path / "c.yaml").write_text(DENY_ALL.replace("deny-all", "broken") + "  bogus: 1\n")
    (tmp_path / "notes.txt").write_text("not yaml: [")
    loaded = load_paths([tmp_path])
    assert loaded.files == 3
    assert sorted(r.key for r in loaded.resources) == ["foo/deny-all", "foo/other"]
    assert [str(p) for p in loaded.problems] == [
        f"{tmp_path / 'c.yaml'}:7: spec.bogus: unknown field (expected one of: action, provider, rules, selector, targetRef, targetRefs)"
    ]


def test_same_policy_in_two_files_refuses_the_later(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(DENY_ALL)
    (tmp_path / "b.yaml").write_text(DENY_ALL)
    loaded = load_paths([tmp_path])
    assert [r.source for r in loaded.resources] == [str(tmp_path / "a.yaml")]
    assert len(loaded.problems) == 1
    assert f"already defined at {tmp_path / 'a.yaml'}:1" in loaded.problems[0].reason


def test_missing_path_is_a_problem(tmp_path: Path) -> None:
    loaded = load_paths([tmp_path / "nope.yaml"])
    assert loaded.resources == []
    assert "no such file" in str(loaded.problems[0])


def test_load_strict_raises_with_every_problem(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("kind: [\n")
    (tmp_path / "b.yaml").write_text(DENY_ALL.replace("DENY", "MAYBE"))
    with pytest.raises(PolicyFileError) as info:
        load_strict([tmp_path])
    assert [Path(p.source).name for p in info.value.problems] == ["a.yaml", "b.yaml"]
