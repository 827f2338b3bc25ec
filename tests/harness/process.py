"""One meshward component as a subprocess for tests: started with its output in a log file, waited
for until it prints its ready line, stopped with SIGTERM (SIGKILL after 10 s)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


class LoggedProcess:
    def __init__(self, name: str, log_path: Path, ready_line: str, startup_timeout: float) -> None:
        self.name = name
        self.log_path = log_path
        self.ready_line = ready_line
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[bytes] | None = None

    def launch(self, argv: list[str], also_ready: Callable[[], bool] = lambda: True) -> None:
        """Start `argv` (unless already running) and wait for the ready line printed by this run."""
        if self.running:
            return
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_bytes()[offset:].decode(errors="replace")
            if self.ready_line in text and also_ready():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}):\n{self.log()}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} not ready after {self.startup_timeout}s:\n{self.log()}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """Stop without a clean shutdown (SIGKILL)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""
