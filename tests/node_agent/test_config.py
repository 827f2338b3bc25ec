"""Agent options: defaults, flags over file values, validation."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from meshward_common.errors import ConfigError
from node_agent.config import build_config, default_socket, load_config_file


def test_defaults():
    cfg = build_config({"node": "node-1", "state_dir": "/var/lib/a"}, {})
    assert cfg.ca_address == "127.0.0.1:15012"
    assert cfg.socket_path == default_socket("node-1") == Path("/run/meshward/node-1/agent.sock")
    assert cfg.workload_ttl == dt.timedelta(hours=24)
    assert cfg.join_token is None


def test_flags_win_over_the_file(tmp_path):
    file = tmp_path / "agent.yaml"
    file.write_text("node: node-1\nstate-dir: /s\nworkload_ttl: 1h\nca-address: 10.0.0.1:15012\n")
    cfg = build_config({"workload_ttl": "30s", "ca_address": None}, load_config_file(file))
    assert cfg.workload_ttl == dt.timedelta(seconds=30)
    assert cfg.ca_address == "10.0.0.1:15012"
    assert cfg.state_dir == Path("/s")


def test_join_token_from_file(tmp_path):
    (tmp_path / "token").write_text("abc123\n")
    (tmp_path / "token").chmod(0o600)
    cfg = build_config(
        {"node": "n", "state_dir": "/s", "join_token_file": str(tmp_path / "token")}, {}
    )
    assert cfg.join_token == "abc123"


@pytest.mark.parametrize(
    ("flags", "phrase"),
    [
        ({"state_dir": "/s"}, "--node is required"),
        ({"node": "n"}, "--state-dir is required"),
        ({"node": "n", "state_dir": "/s", "socket": "/" + "x" * 120}, "longer than a Unix socket"),
        ({"node": "n", "state_dir": "/s", "ca_address": "host:99999"}, "not HOST:PORT"),
    ],
)
def test_invalid_options(flags, phrase):
    with pytest.raises(ConfigError, match=phrase):
        build_config(flags, {})


def test_config_file_problems(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config_file(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config_file(tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("node: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config_file(tmp_path / "bad.yaml")
