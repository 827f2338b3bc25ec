"""`meshward ca join-token` and `meshward ca dev-certs` as an operator runs them."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from ca.store import CaStore, token_digest

REPO = Path(__file__).resolve().parents[2]


def meshward(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshward", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_join_token_prints_a_token_and_stores_only_its_digest(tmp_path: Path) -> None:
    out = meshward(
        "ca", "join-token", "--node", "node-1", "--state-dir", str(tmp_path), "--ttl", "10m"
    )
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    assert len(token) >= 40
    files = sorted(tmp_path.glob("ca.db*"))
    assert files, "the token went into the CA's state database"
    for path in files:
        assert token.encode() not in path.read_bytes()
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
    store = CaStore(tmp_path)
    ((digest, node, _expires, used),) = store.join_token_rows()
    assert (digest, node, used) == (token_digest(token), "node-1", 0)


def test_join_token_out_writes_it_0600_and_prints_nothing_of_it(tmp_path: Path) -> None:
    out_file = tmp_path / "node-1.token"
    out_file.write_text("stale\n")
    out_file.chmod(0o644)  # an old world-readable file is replaced, not reused
    state = tmp_path / "state"
    out = meshward(
        "ca", "join-token", "--node", "node-1", "--state-dir", str(state), "--out", str(out_file)
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == ""
    token = out_file.read_text().strip()
    assert len(token) >= 40
    assert token not in out.stderr
    assert f"wrote the join token for node-1 to {out_file} (mode 0600)" in out.stderr
    assert stat.S_IMODE(os.stat(out_file).st_mode) == 0o600
    missing = meshward(
        "ca", "join-token", "--node", "n", "--state-dir", str(state),
        "--out", str(tmp_path / "no" / "dir" / "t"),
    )  # fmt: skip
    assert missing.returncode != 0
    assert "--out" in missing.stderr
    assert "cannot write: No such file or directory" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_join_token_refuses_a_bad_node_name_or_ttl(tmp_path: Path) -> None:
    out = meshward("ca", "join-token", "--node", "Node_1", "--state-dir", str(tmp_path))
    assert out.returncode != 0
    assert "node name 'Node_1' is not a valid name" in out.stderr
    out = meshward("ca", "join-token", "--node", "n", "--state-dir", str(tmp_path), "--ttl", "soon")
    assert out.returncode != 0
    assert "--ttl: 'soon' is not a duration" in out.stderr


def test_dev_certs_writes_the_istio_layout(tmp_path: Path) -> None:
    out = meshward("ca", "dev-certs", "--out", str(tmp_path / "certs-dev"))
    assert out.returncode == 0, out.stderr
    files = sorted(
        str(p.relative_to(tmp_path / "certs-dev")) for p in (tmp_path / "certs-dev").rglob("*.pem")
    )
    assert files == [
        "cluster1/ca-cert.pem",
        "cluster1/ca-key.pem",
        "cluster1/cert-chain.pem",
        "cluster1/root-cert.pem",
        "root-cert.pem",
        "root-key.pem",
    ]


def test_repo_certs_dev_ignores_generated_keys() -> None:
    for name in ("certs-dev/root-key.pem", "certs-dev/cluster1/ca-key.pem"):
        out = subprocess.run(
            ["git", "check-ignore", "-q", name], cwd=REPO, capture_output=True, check=False
        )
        assert out.returncode == 0, f"{name} is not git-ignored"


def test_serve_config_file_errors_name_the_file_and_line(tmp_path: Path) -> None:
    conf = tmp_path / "ca.yaml"
    conf.write_text("listen: 127.0.0.1:0\nstate-dir: /tmp/x\nmax-tll: 1h\n")
    out = meshward("ca", "serve", "--config", str(conf))
    assert out.returncode != 0
    assert f"{conf}:3: unknown key 'max-tll'" in out.stderr
