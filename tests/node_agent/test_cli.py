"""`meshward agent run`: options validated at start, each problem one clear line, no traceback."""

from __future__ import annotations

import datetime as dt
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshward_common.svid import pem_of
from node_agent.cli import agent
from tests.harness.node_agent import short_socket_path
from tests.node_agent.certs import MiniCA

REPO = Path(__file__).resolve().parents[2]


def run_agent(*args, timeout=60):
    out = subprocess.run(
        [sys.executable, "-m", "meshward", "agent", "run", *args],
        capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False,
    )  # fmt: skip
    assert "Traceback" not in out.stderr, out.stderr
    last = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else ""
    return out.returncode, last


@pytest.fixture
def ca(tmp_path):
    ca = MiniCA()
    (tmp_path / "bundle.pem").write_bytes(pem_of([ca.root]))
    return ca


def write_node_identity(state: Path, ca: MiniCA, node: str, now: dt.datetime) -> None:
    state.mkdir(mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (state / "node-key.pem").write_bytes(pem)
    chain = ca.issue(key.public_key(), f"spiffe://cluster.local/meshward/node/{node}",
                     dt.timedelta(minutes=10), now=now)  # fmt: skip
    (state / "node-cert.pem").write_bytes(pem_of(chain[:1]))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def sock_path():
    path = short_socket_path("node-1")
    yield path
    shutil.rmtree(path.parent, ignore_errors=True)


def base_args(tmp_path, sock_path, **over):
    args = {
        "--node": "node-1",
        "--state-dir": str(tmp_path / "state"),
        "--socket": str(sock_path),
        "--trust-bundle": str(tmp_path / "bundle.pem"),
        "--ca-address": f"127.0.0.1:{closed_port()}",
    }
    args.update(over)
    return [x for kv in args.items() for x in kv if x is not None]


def test_missing_ca_at_bootstrap_is_one_line(tmp_path, ca, sock_path):
    token = tmp_path / "token"
    token.write_text("tok\n")
    token.chmod(0o600)
    code, line = run_agent(*base_args(tmp_path, sock_path), "--join-token-file", str(token))
    assert code == 1
    assert line.startswith("meshward agent: error: cannot bootstrap")
    assert "unreachable" in line


def test_no_join_token_and_no_node_svid_says_how_to_get_one(tmp_path, ca, sock_path):
    code, line = run_agent(*base_args(tmp_path, sock_path))
    assert code == 1
    assert "no node SVID" in line
    assert "meshward ca join-token --node node-1 --out FILE" in line
    assert (
        "--join-token-file FILE (mode 0600), or pipe the token in with --join-token-file -" in line
    )


def test_expired_node_svid_says_so_and_how_to_re_bootstrap(tmp_path, ca, sock_path):
    write_node_identity(
        tmp_path / "state", ca, "node-1", dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    )
    code, line = run_agent(*base_args(tmp_path, sock_path))
    assert code == 1
    assert "node SVID" in line
    assert "expired at" in line
    assert "re-bootstrap" in line


def test_node_svid_of_another_node_is_refused(tmp_path, ca, sock_path):
    write_node_identity(tmp_path / "state", ca, "node-2", dt.datetime.now(dt.UTC))
    code, line = run_agent(*base_args(tmp_path, sock_path))
    assert code == 1
    assert "not node 'node-1'" in line


def test_unusable_state_dir_is_one_line(tmp_path, ca, sock_path):
    (tmp_path / "afile").write_text("x")
    code, line = run_agent(
        *base_args(tmp_path, sock_path, **{"--state-dir": str(tmp_path / "afile" / "state")})
    )
    assert code == 1
    assert line.startswith("meshward agent: error: state dir")
    assert "cannot create" in line


def test_socket_path_in_use_is_one_line_and_left_alone(tmp_path, ca, sock_path):
    write_node_identity(tmp_path / "state", ca, "node-1", dt.datetime.now(dt.UTC))
    path = sock_path
    holder = socket.socket(socket.AF_UNIX)
    holder.bind(str(path))
    holder.listen(1)
    try:
        # options from a config file this time
        config = tmp_path / "agent.yaml"
        config.write_text(
            f"node: node-1\nstate-dir: {tmp_path / 'state'}\nsocket: {path}\n"
            f"trust-bundle: {tmp_path / 'bundle.pem'}\nca-address: 127.0.0.1:{closed_port()}\n"
        )
        code, line = run_agent("--config", str(config))
        assert code == 1
        assert f"socket path {path} is in use" in line
        assert path.is_socket()  # still the other process's
    finally:
        holder.close()


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (["--workload-ttl", "soon"], "--workload-ttl: 'soon' is not a duration"),
        (["--ca-address", "nowhere"], "--ca-address: 'nowhere' is not HOST:PORT"),
        (["--node", "Node_1"], "--node: node name 'Node_1' is not a valid name"),
        (
            ["--join-token-file", "/nonexistent/token"],
            "--join-token-file /nonexistent/token: cannot read",
        ),
    ],
)
def test_bad_options_are_one_line_each(tmp_path, ca, sock_path, args, phrase):
    # refused before anything starts: checked in-process (no subprocess needed)
    result = CliRunner().invoke(agent, ["run", *base_args(tmp_path, sock_path), *args])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"meshward agent: error: {result.output.split('error: ', 1)[1].strip()}"
    ]
    assert phrase in result.output
    assert not (tmp_path / "state").exists()


def test_config_file_with_unknown_option_is_refused(tmp_path, ca, sock_path):
    config = tmp_path / "agent.yaml"
    config.write_text("node: node-1\ncolour: blue\n")
    result = CliRunner().invoke(agent, ["run", "--config", str(config)])
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1
    assert "unknown option 'colour'" in result.output
