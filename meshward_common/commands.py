"""Running the OS's network tools (ip, iptables-restore): one clear error line when one fails."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from meshward_common.errors import MeshwardError

COMMAND_TIMEOUT_S = 20.0


def run_command(
    argv: Sequence[str],
    error: type[MeshwardError],
    context: str,
    *,
    check: bool = True,
    stdin: str | None = None,
    timeout: float = COMMAND_TIMEOUT_S,
) -> str:
    """Run `argv` and return its stdout; raise `error` saying `context`, the command and its stderr
    when it cannot run, times out, or (with `check`) exits non-zero."""
    shown = " ".join(argv)
    try:
        done = subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise error(f"{context}: {shown}: {exc}") from exc
    if check and done.returncode != 0:
        detail = done.stderr.strip().replace("\n", " | ")
        raise error(f"{context}: {shown} failed (exit {done.returncode}): {detail}")
    return done.stdout
