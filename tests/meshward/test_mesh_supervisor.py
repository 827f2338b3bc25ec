"""The supervisor: detached processes with records and logs, stop, crash, restart, strays."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from meshward.mesh.supervisor import Supervisor, kill_pids, pids_mentioning
from meshward_common.errors import ConfigError

SLEEPER = [sys.executable, "-c", "import sys, time; print('hello', flush=True); time.sleep(60)"]


@pytest.fixture
def sup(tmp_path: Path):
    (tmp_path / "run").mkdir()
    (tmp_path / "logs").mkdir()
    s = Supervisor(tmp_path / "run", tmp_path / "logs")
    yield s
    for record in s.records():
        s.stop(record.name, grace_s=1)


def test_start_records_and_logs(sup: Supervisor, tmp_path: Path):
    record = sup.start("thing", SLEEPER)
    assert sup.running("thing")
    assert sup.record("thing") == record
    assert record.start_time > 0
    from meshward.mesh.readiness import wait_until

    assert wait_until(lambda: "hello" in (tmp_path / "logs" / "thing.log").read_text(), 10)
    assert "starting thing" in (tmp_path / "logs" / "thing.log").read_text()


def test_stop_ends_the_process_and_its_record(sup: Supervisor):
    sup.start("thing", SLEEPER)
    assert sup.stop("thing", grace_s=2) is True
    assert not sup.running("thing")
    assert sup.record("thing") is None
    assert sup.stop("thing") is False  # idempotent


def test_stop_escalates_to_sigkill(sup: Supervisor):
    stubborn = [
        sys.executable,
        "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('x', flush=True); time.sleep(60)",
    ]
    sup.start("stubborn", stubborn)
    from meshward.mesh.readiness import wait_until

    assert wait_until(lambda: "x\n" in Path(sup.record("stubborn").log).read_text(), 10)
    assert sup.stop("stubborn", grace_s=0.5) is True
    assert not sup.running("stubborn")


def test_a_killed_process_is_seen_dead_and_restarts_with_its_argv(sup: Supervisor):
    first = sup.start("thing", SLEEPER)
    sup.kill("thing")
    assert not sup.running("thing")
    assert sup.record("thing") == first  # a crash leaves the record
    second = sup.restart("thing")
    assert second.argv == first.argv
    assert second.pid != first.pid
    assert sup.running("thing")


def test_a_recycled_pid_is_not_mistaken_for_ours(sup: Supervisor):
    record = sup.start("thing", SLEEPER)
    sup.stop("thing")
    # Forge a record with a live pid (our own) but another start time.
    import dataclasses
    import json
    import os

    forged = dataclasses.replace(record, pid=os.getpid(), start_time=1)
    (sup.run_dir / "thing.json").write_text(json.dumps(dataclasses.asdict(forged)))
    assert not sup.running("thing")


def test_restart_of_unknown_component_is_refused(sup: Supervisor):
    with pytest.raises(ConfigError, match="no component named 'ghost'"):
        sup.restart("ghost")


def test_bad_executable_is_a_config_error(sup: Supervisor):
    with pytest.raises(ConfigError, match="cannot start bad"):
        sup.start("bad", ["/nonexistent/binary"])


def test_strays_are_found_by_marker_and_killed(tmp_path: Path):
    import subprocess

    marker = str(tmp_path / "marker-dir") + "/"
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", marker + "sock"])
    try:
        from meshward.mesh.readiness import wait_until

        # The child's command line is visible once it has exec'd.
        assert wait_until(lambda: proc.pid in pids_mentioning(marker), 10)
        kill_pids([proc.pid], grace_s=2)
        proc.wait(timeout=5)
        assert proc.pid not in pids_mentioning(marker)
    finally:
        proc.kill()
        proc.wait()
