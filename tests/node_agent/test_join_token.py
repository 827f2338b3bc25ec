"""The join token never reaches another local user: not in argv, not in the environment, not in a
file they can read — proved by a process of another uid watching the agent while it bootstraps."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from meshward_common.errors import ConfigError
from node_agent.cli import agent
from node_agent.join_token import read_join_token
from tests.harness.control_plane import run_control_plane
from tests.harness.node_agent import short_socket_path

REPO = Path(__file__).resolve().parents[2]
OTHER_UID = 65534  # nobody
REGISTRY = "workloads: []\n"

# Run as another uid: everything it can read of every process and of the agent's files, again and
# again until stopped, printed once each (the test looks for the token in it).
SNOOP = textwrap.dedent(
    r"""
    import os, sys
    paths, seen = sys.argv[1:], set()
    def out(what, data):
        if data and (what, data) not in seen:
            seen.add((what, data))
            sys.stdout.write(f"{what}: {data!r}\n")
            sys.stdout.flush()
    def grab(path):
        try:
            with open(path, "rb") as f:
                return f.read(65536)
        except OSError:
            return b""
    out("started", b"1")
    while True:
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                out(f"/proc/{pid}/cmdline", grab(f"/proc/{pid}/cmdline"))
                out(f"/proc/{pid}/environ", grab(f"/proc/{pid}/environ"))
        for path in paths:
            out(path, grab(path))
            try:
                for name in os.listdir(path):
                    out(f"{path}/{name}", grab(f"{path}/{name}"))
            except OSError:
                pass
    """
)


def as_other_user() -> None:
    os.setgroups([])
    os.setgid(OTHER_UID)
    os.setuid(OTHER_UID)


@pytest.mark.slow
@pytest.mark.parametrize("via", ["stdin", "file"])
def test_another_uid_cannot_obtain_the_token_while_the_agent_bootstraps(
    tmp_path: Path, via: str
) -> None:
    if os.geteuid() != 0:
        pytest.fail("needs root (to run the watcher as another uid); CI runs as root")
    # A directory the other user may look around in: only the token file itself is private.
    shared = Path(tempfile.mkdtemp(prefix="mw-jt-"))
    shared.chmod(0o755)
    with run_control_plane(tmp_path, REGISTRY) as cp, contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, shared, ignore_errors=True)
        token = cp.join_token("node-1")
        state = shared / "agent-state"
        token_file = shared / "token"
        socket_path = short_socket_path("node-1")
        argv = [
            sys.executable, "-m", "meshward", "agent", "run",
            "--node", "node-1", "--ca-address", cp.address, "--state-dir", str(state),
            "--socket", str(socket_path), "--trust-bundle", str(cp.bundle_path),
        ]  # fmt: skip
        if via == "file":
            fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(token + "\n")
            argv += ["--join-token-file", str(token_file)]
        else:
            argv += ["--join-token-file", "-"]
        snoop = subprocess.Popen(
            [sys.executable, "-c", SNOOP, str(shared), str(state), str(token_file)],
            preexec_fn=as_other_user,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd="/",
            env={"PATH": "/usr/bin:/bin"},
        )
        assert snoop.stdout is not None
        assert snoop.stdout.readline().startswith(b"started")  # watching before the agent starts
        log = cleanup.enter_context((tmp_path / "agent.log").open("w+"))
        proc = subprocess.Popen(
            argv,
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        try:
            assert proc.stdin is not None
            if via == "stdin":
                proc.stdin.write(token + "\n")
            proc.stdin.close()
            served = "meshward agent: serving Workload API"
            for _ in range(600):  # up to 60 s to bootstrap and serve
                log.seek(0)
                text = log.read()
                if served in text or proc.poll() is not None:
                    break
                time.sleep(0.1)
            assert served in text, text
            assert (state / "node-cert.pem").exists()  # the token was redeemed, by the agent
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            snoop.kill()
            seen, _ = snoop.communicate(timeout=30)
    watched = seen.decode(errors="replace")
    assert f"/proc/{proc.pid}/cmdline" in watched  # it did see the agent's command line...
    assert token not in watched  # ...and never the token, anywhere
    assert token.encode() not in seen
    # The agent's own files stay its own: the node key is 0600 in a 0700 directory.
    assert f"{state}/node-key.pem" not in watched


def private_token(path: Path, text: str = "tok-123\n", mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_token_file_must_be_private_to_the_agents_user(tmp_path: Path) -> None:
    assert read_join_token(str(private_token(tmp_path / "ok")), io.StringIO()) == "tok-123"
    for mode in (0o644, 0o640, 0o604, 0o660, 0o602):
        with pytest.raises(ConfigError, match=f"mode {mode:04o} lets other users") as err:
            read_join_token(str(private_token(tmp_path / f"m{mode:o}", mode=mode)), io.StringIO())
        assert "chmod 600" in str(err.value)
        assert "tok-123" not in str(err.value)


def test_token_file_of_another_user_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("needs root (to give the file away); CI runs as root")
    path = private_token(tmp_path / "theirs")
    os.chown(path, OTHER_UID, OTHER_UID)
    with pytest.raises(ConfigError, match=f"owned by uid {OTHER_UID}, not by this agent's user"):
        read_join_token(str(path), io.StringIO())


def test_token_from_stdin_and_what_is_not_a_token(tmp_path: Path) -> None:
    assert read_join_token("-", io.StringIO("abc-DEF_123\n")) == "abc-DEF_123"
    with pytest.raises(ConfigError, match="no token in it"):
        read_join_token("-", io.StringIO(""))
    with pytest.raises(ConfigError, match="not a join token"):
        read_join_token("-", io.StringIO("two words\n"))
    with pytest.raises(ConfigError, match="not a regular file"):
        read_join_token(str(tmp_path), io.StringIO())
    with pytest.raises(ConfigError, match="longer than 4096 bytes"):
        read_join_token(str(private_token(tmp_path / "big", "x" * 5000)), io.StringIO())


def test_there_is_no_join_token_option_and_no_config_key(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        agent, ["run", "--node", "n", "--state-dir", str(tmp_path), "--join-token", "abc"]
    )
    assert result.exit_code == 2
    assert "No such option '--join-token'" in result.output
    config = tmp_path / "agent.yaml"
    config.write_text("node: n\nstate-dir: /s\njoin-token: abc\n")
    result = CliRunner().invoke(agent, ["run", "--config", str(config)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"meshward agent: error: config file {config}: join-token: not a config option (a "
        "secret belongs in a file of its own); use join-token-file: FILE (mode 0600), or - for "
        "stdin"
    ]
    assert "abc" not in result.output


def test_world_readable_token_file_stops_the_agent_in_one_line(tmp_path: Path) -> None:
    token = private_token(tmp_path / "token", mode=0o644)
    result = CliRunner().invoke(
        agent,
        ["run", "--node", "n", "--state-dir", str(tmp_path), "--join-token-file", str(token)],
    )
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"meshward agent: error: --join-token-file {token}: mode 0644 lets other users read or "
        "change it; `chmod 600` it (or pass the token on stdin: --join-token-file -)"
    ]
