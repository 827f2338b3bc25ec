"""The data path's hot modules run compiled (make install builds them), and never stale."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from sidecar_tls import hot_path


@pytest.mark.parametrize("name", hot_path.HOT_PATH)
def test_hot_path_module_is_compiled(name: str) -> None:
    module = importlib.import_module("sidecar_tls." + name.replace("/", "."))
    assert hot_path.is_compiled(module), (
        f"sidecar_tls/{name} runs interpreted from {module.__file__}; `make install` compiles it"
    )


def test_compiled_modules_match_their_sources() -> None:
    assert hot_path.stale() == []


def test_a_changed_source_makes_the_compiled_modules_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    digest_file = tmp_path / "hot_path.sha256"
    digest_file.write_text(hot_path.digest() + "\n")
    monkeypatch.setattr(hot_path, "DIGEST_FILE", digest_file)
    assert hot_path.stale() == []
    digest_file.write_text("0" * 64 + "\n")  # as if built from other sources
    assert hot_path.stale() == [
        f"compiled modules in {hot_path.PACKAGE_DIR} were built from other sources than these"
    ]
    digest_file.unlink()
    assert hot_path.stale() != []


def test_the_digest_covers_every_hot_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in hot_path.HOT_PATH:
        (tmp_path / f"{name}.py").parent.mkdir(exist_ok=True)
        (tmp_path / f"{name}.py").write_text(f"# {name}\n")
    monkeypatch.setattr(hot_path, "PACKAGE_DIR", tmp_path)
    before = hot_path.digest()
    (tmp_path / f"{hot_path.HOT_PATH[-1]}.py").write_text("# edited\n")
    assert hot_path.digest() != before


def test_check_exits_nonzero_when_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    digest_file = tmp_path / "hot_path.sha256"
    digest_file.write_text("0" * 64 + "\n")
    monkeypatch.setattr(hot_path, "DIGEST_FILE", digest_file)
    assert hot_path.main(["hot_path", "--check"]) == 1
    assert "run `make install`" in capsys.readouterr().err
