"""The compiled hot path: built outside the source tree, used only when current, switched off by
MESHWARD_INTERPRETED=1 (make test runs the sidecar's tests both ways)."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest

from sidecar_tls import _compiled, hot_path


@pytest.mark.parametrize("name", _compiled.HOT_PATH)
def test_hot_path_modules_run_compiled_unless_switched_off(name: str) -> None:
    module = importlib.import_module("sidecar_tls." + name.replace("/", "."))
    if os.environ.get(_compiled.SWITCH) == "1":
        assert not hot_path.is_compiled(module), f"{name} runs compiled despite the switch"
        assert str(module.__file__).startswith(str(_compiled.PACKAGE_DIR))
    else:
        assert hot_path.is_compiled(module), (
            f"sidecar_tls/{name} runs interpreted from {module.__file__}; `make compiled` builds it"
        )
        assert str(module.__file__).startswith(str(_compiled.BUILD_DIR))  # never in the sources


def test_no_compiled_module_lies_in_the_source_tree() -> None:
    suffixes = (".so", ".pyd")
    assert [p for p in _compiled.PACKAGE_DIR.rglob("*") if p.suffix in suffixes] == []


def test_a_build_from_other_sources_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    digest_file = tmp_path / "hot_path.sha256"
    monkeypatch.setattr(_compiled, "DIGEST_FILE", digest_file)
    monkeypatch.setattr(hot_path, "recorded_digest", lambda: _compiled.recorded_digest(digest_file))
    monkeypatch.delenv(_compiled.SWITCH, raising=False)
    digest_file.write_text(_compiled.digest() + "\n")
    assert hot_path.stale() == []
    digest_file.write_text("0" * 64 + "\n")  # as if built from other sources
    assert hot_path.stale() == [
        f"the compiled modules in {_compiled.BUILD_DIR} were built from other sources than these"
    ]
    assert hot_path.main(["hot_path", "--check"]) == 1
    digest_file.unlink()
    assert hot_path.stale() == []  # nothing built: the sources run, nothing is stale


def test_the_loader_decides_by_the_digest_and_the_switch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    digest_file = tmp_path / "hot_path.sha256"
    read = _compiled.recorded_digest
    monkeypatch.setattr(_compiled, "recorded_digest", lambda: read(digest_file))
    monkeypatch.delenv(_compiled.SWITCH, raising=False)

    def decide() -> bool:
        _compiled.use_compiled.cache_clear()
        return _compiled.use_compiled()

    try:
        assert decide() is False  # never built
        digest_file.write_text(_compiled.digest() + "\n")
        assert decide() is True
        assert _compiled.extend_path(["src"], "sidecar_tls.http1") == [
            str(_compiled.BUILD_DIR / "sidecar_tls" / "http1"),
            "src",
        ]
        monkeypatch.setenv(_compiled.SWITCH, "1")
        assert decide() is False
        assert _compiled.extend_path(["src"], "sidecar_tls.http1") == ["src"]
        monkeypatch.delenv(_compiled.SWITCH)
        digest_file.write_text("0" * 64 + "\n")
        assert decide() is False  # stale: the sources run
    finally:
        _compiled.use_compiled.cache_clear()


def test_the_digest_covers_every_hot_source(tmp_path: Path) -> None:
    for name in _compiled.HOT_PATH:
        (tmp_path / f"{name}.py").parent.mkdir(exist_ok=True)
        (tmp_path / f"{name}.py").write_text(f"# {name}\n")
    before = _compiled.digest(tmp_path)
    (tmp_path / f"{_compiled.HOT_PATH[-1]}.py").write_text("# edited\n")
    assert _compiled.digest(tmp_path) != before


@pytest.mark.parametrize("name", _compiled.LIBRARY_MODULES)
def test_the_http2_libraries_run_compiled_unless_switched_off(name: str) -> None:
    module = importlib.import_module(name.replace("/", "."))
    if os.environ.get(_compiled.SWITCH) == "1":
        assert not hot_path.is_compiled(module), f"{name} runs compiled despite the switch"
        assert str(module.__file__).startswith(str(_compiled.library_root()))
    else:
        assert hot_path.is_compiled(module), (
            f"{name} runs interpreted from {module.__file__}; `make compiled` builds it"
        )
        assert str(module.__file__).startswith(str(_compiled.LIBRARIES_DIR))


def test_compiled_libraries_built_from_other_sources_are_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "site-packages"
    for name in ("h2/__init__", "h2/connection", "hpack/__init__", "hyperframe/__init__"):
        (root / f"{name}.py").parent.mkdir(parents=True, exist_ok=True)
        (root / f"{name}.py").write_text(f"# {name}\n")
    digest_file = tmp_path / "libraries.sha256"
    monkeypatch.setattr(_compiled, "LIBRARIES_DIGEST_FILE", digest_file)
    monkeypatch.setattr(_compiled, "library_root", lambda: root)
    monkeypatch.delenv(_compiled.SWITCH, raising=False)

    def decide() -> bool:
        _compiled.use_compiled_libraries.cache_clear()
        return _compiled.use_compiled_libraries()

    try:
        assert decide() is False  # never built
        digest_file.write_text(_compiled.library_digest(root) + "\n")
        assert decide() is True
        monkeypatch.setenv(_compiled.SWITCH, "1")
        assert decide() is False
        monkeypatch.delenv(_compiled.SWITCH)
        (root / "h2" / "connection.py").write_text("# another h2\n")  # upgraded, not rebuilt
        assert decide() is False
    finally:
        _compiled.use_compiled_libraries.cache_clear()


def test_the_libraries_go_first_on_sys_path_only_before_they_are_imported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    monkeypatch.setattr(_compiled, "use_compiled_libraries", lambda: True)
    path = [p for p in sys.path if p != str(_compiled.LIBRARIES_DIR)]
    monkeypatch.setattr(sys, "path", list(path))
    _compiled.put_libraries_first()  # h2 is imported in this process already
    assert sys.path == path
    for name in _compiled.LIBRARIES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    _compiled.put_libraries_first()
    assert sys.path == [str(_compiled.LIBRARIES_DIR), *path]
