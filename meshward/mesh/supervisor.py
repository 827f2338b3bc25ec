"""Runs the mesh's processes detached, one log file each, and finds them again later.

Every process gets its own session (so `meshward up` can exit and `stop` can signal the whole
group) and a record `<run>/<name>.json` with its pid, its kernel start time (so a recycled pid is
never mistaken for ours) and its argv (so a dead component can be restarted exactly as it was).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from meshward_common.errors import ConfigError

STOP_GRACE_S = 5.0


@dataclass(frozen=True)
class ProcessRecord:
    name: str
    pid: int
    start_time: int  # field 22 of /proc/<pid>/stat, in clock ticks since boot
    argv: tuple[str, ...]
    log: str


def _proc_start_time(pid: int) -> int | None:
    """The process's start time, or None if there is no such live (non-zombie) process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


class Supervisor:
    def __init__(self, run_dir: Path, log_dir: Path) -> None:
        self.run_dir = run_dir
        self.log_dir = log_dir
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    def _record_path(self, name: str) -> Path:
        return self.run_dir / f"{name}.json"

    def start(
        self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None
    ) -> ProcessRecord:
        """Start `argv` detached, appending its stdout and stderr to `<logs>/<name>.log`."""
        log = self.log_dir / f"{name}.log"
        with log.open("ab") as out:
            out.write(f"--- meshward: starting {name}: {' '.join(argv)}\n".encode())
            out.flush()
            try:
                proc = subprocess.Popen(
                    list(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    # Unbuffered: a crash's last words reach the log.
                    env={**(env if env is not None else os.environ), "PYTHONUNBUFFERED": "1"},
                )
            except OSError as exc:
                raise ConfigError(f"mesh: cannot start {name} ({argv[0]}): {exc.strerror}") from exc
        self._children[proc.pid] = proc
        start_time = _proc_start_time(proc.pid) or 0
        record = ProcessRecord(name, proc.pid, start_time, tuple(argv), str(log))
        tmp = self._record_path(name).with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(record)) + "\n")
        tmp.replace(self._record_path(name))
        return record

    def record(self, name: str) -> ProcessRecord | None:
        try:
            data = json.loads(self._record_path(name).read_text())
        except (OSError, ValueError):
            return None
        data["argv"] = tuple(data["argv"])
        return ProcessRecord(**data)

    def records(self) -> list[ProcessRecord]:
        if not self.run_dir.is_dir():
            return []
        out = [self.record(p.stem) for p in sorted(self.run_dir.glob("*.json"))]
        return [r for r in out if r is not None]

    def is_running(self, record: ProcessRecord) -> bool:
        self._reap(record.pid)
        now = _proc_start_time(record.pid)
        return now is not None and (record.start_time == 0 or now == record.start_time)

    def running(self, name: str) -> bool:
        record = self.record(name)
        return record is not None and self.is_running(record)

    def restart(self, name: str) -> ProcessRecord:
        record = self.record(name)
        if record is None:
            raise ConfigError(f"mesh: no component named {name!r} was ever started here")
        self.stop(name)
        return self.start(name, record.argv)

    def stop(self, name: str, grace_s: float = STOP_GRACE_S) -> bool:
        """SIGTERM the component's process group, SIGKILL after `grace_s`. True if it was running."""
        record = self.record(name)
        was_running = False
        if record is not None and self.is_running(record):
            was_running = True
            _signal_group(record.pid, signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while self.is_running(record) and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.is_running(record):
                _signal_group(record.pid, signal.SIGKILL)
                while self.is_running(record) and time.monotonic() < deadline + 2:
                    time.sleep(0.05)
        with contextlib.suppress(FileNotFoundError):
            self._record_path(name).unlink()
        return was_running

    def kill(self, name: str) -> None:
        """SIGKILL without cleanup, keeping the record: what a crash looks like (for tests)."""
        record = self.record(name)
        if record is not None and self.is_running(record):
            _signal_group(record.pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while self.is_running(record) and time.monotonic() < deadline:
                time.sleep(0.02)

    def _reap(self, pid: int) -> None:
        # Only processes this object started are our children; others are reaped by init.
        proc = self._children.get(pid)
        if proc is not None and proc.poll() is not None:
            del self._children[pid]


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def pids_mentioning(marker: str) -> list[int]:
    """Live processes whose command line contains `marker` (the state dir): what a crashed `up`
    may have left running without a record."""
    found: list[int] = []
    needle = marker.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline and _proc_start_time(int(entry.name)) is not None:
            found.append(int(entry.name))
    return found


def kill_pids(pids: Sequence[int], grace_s: float = 2.0) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_proc_start_time(p) is not None for p in pids):
        time.sleep(0.05)
    for pid in pids:
        if _proc_start_time(pid) is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
