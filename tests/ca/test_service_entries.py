"""The control plane's ServiceEntry directory: entries reach the MeshState, a file that stops
parsing is one line and keeps its last good version, a removed file takes its entries away."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ca.config import build_config
from ca.mesh_state import MeshStateSource
from ca.service_entries import ServiceEntryDir
from meshward_common.errors import ConfigError
from tests.meshward_common.test_service_entry import ENTRY


def test_entries_follow_the_files_and_a_bad_file_keeps_its_last_good_version(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "entries"
    directory.mkdir()
    (directory / "ratings.yaml").write_text(ENTRY)
    (directory / "notes.txt").write_text("not YAML, not read")
    entries = ServiceEntryDir(directory)
    assert entries.scan() is True
    (entry,) = entries.entries
    assert entry.hosts == ("ratings.b.example",)
    assert entries.scan() is False

    source = MeshStateSource(None, None, "a.example")
    assert source.set_service_entries(entries.entries) is True
    (served,) = source.state.service_entries
    assert (list(served.hosts), list(served.endpoints), list(served.subject_alt_names)) == (
        ["ratings.b.example"], ["10.0.0.7"], ["spiffe://b.example/ns/default/sa/ratings"],
    )  # fmt: skip
    assert source.set_service_entries(entries.entries) is False

    caplog.set_level(logging.ERROR, logger="ca.service_entries")
    (directory / "ratings.yaml").write_text(ENTRY.replace("STATIC", "DNS"))
    assert entries.scan() is False
    assert entries.scan() is False  # not read again while unchanged: one line, not one per poll
    assert entries.entries == (entry,)
    (record,) = caplog.records
    assert record.getMessage().startswith(
        f"ServiceEntry refused, keeping the last good version: {directory / 'ratings.yaml'}:"
    )
    assert "resolution" in record.getMessage()

    (directory / "ratings.yaml").unlink()
    assert entries.scan() is True
    assert entries.entries == ()


def test_no_service_entry_dir_with_kubernetes(tmp_path: Path) -> None:
    (tmp_path / "entries").mkdir()
    with pytest.raises(ConfigError, match=r"^service-entry-dir: not with kubernetes"):
        build_config(
            {
                "state-dir": str(tmp_path),
                "kubernetes": True,
                "service-entry-dir": str(tmp_path / "entries"),
            }
        )


def test_entries_that_would_outgrow_the_mesh_states_bound_are_refused_in_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "entries"
    directory.mkdir()
    (directory / "ratings.yaml").write_text(ENTRY)
    entries = ServiceEntryDir(directory)
    entries.scan()
    empty = MeshStateSource(None, None, "a.example").state.ByteSize()
    source = MeshStateSource(None, None, "a.example", max_state_bytes=empty + 10)
    caplog.set_level(logging.ERROR, logger="ca.mesh_state")
    assert source.set_service_entries(entries.entries, str(directory)) is False
    assert list(source.state.service_entries) == []
    (record,) = caplog.records
    assert record.getMessage() == (
        f"ServiceEntry files refused, keeping the last good ones: {directory}: the mesh state "
        f"would exceed {empty + 10} bytes with it (the mesh state's bound, MESH_STATE_MAX_BYTES)"
    )
