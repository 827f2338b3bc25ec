"""Configuration: flags or one YAML file, validated at start with clear errors."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from ca.config import build_config, parse_listen, read_config_file
from meshward_common.errors import ConfigError


def test_defaults_are_safe() -> None:
    cfg = build_config({})
    assert (cfg.host, cfg.port) == ("127.0.0.1", 15012)
    assert cfg.trust_domain == "cluster.local"
    assert cfg.workload_ttl == cfg.max_ttl == dt.timedelta(hours=24)
    assert cfg.root_namespace == "istio-system"


def test_config_file_with_flags_on_top(tmp_path: Path) -> None:
    reg = tmp_path / "registry.yaml"
    reg.write_text("workloads: []\n")
    conf = tmp_path / "ca.yaml"
    conf.write_text(
        f"listen: 127.0.0.1:9999\nstate-dir: {tmp_path}/s\nregistry: {reg}\n"
        "workload-ttl: 1h\nmax_ttl: 2h\ntrust-domain: example.org\n"
    )
    settings = read_config_file(conf)
    settings.update({"listen": "127.0.0.1:7777"})
    cfg = build_config(settings)
    assert cfg.port == 7777
    assert cfg.registry == reg
    assert cfg.workload_ttl == dt.timedelta(hours=1)
    assert cfg.max_ttl == dt.timedelta(hours=2)
    assert cfg.trust_domain == "example.org"


BAD = [
    ({"listen": "localhost"}, "not HOST:PORT"),
    ({"listen": "example.com:15012"}, "not an IP address"),
    ({"listen": "127.0.0.1:70000"}, "not HOST:PORT"),
    ({"trust-domain": "Bad Domain"}, "trust-domain"),
    ({"workload-ttl": "forever"}, "workload-ttl: 'forever' is not a duration"),
    ({"workload-ttl": "48h"}, "longer than max-ttl"),
    ({"max-ttl": "0s"}, "greater than zero"),
    (
        {"registry": "/nonexistent/registry.yaml"},
        "registry: /nonexistent/registry.yaml is not a file",
    ),
    ({"policy-dir": "/nonexistent"}, "policy-dir: /nonexistent is not a directory"),
    ({"plugin-ca-dir": "/nonexistent"}, "plugin-ca-dir"),
    ({"rate-limit": "fast"}, "not a number"),
]


@pytest.mark.parametrize(("settings", "message"), BAD)
def test_bad_settings_are_refused_clearly(settings: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(settings)
    assert message in str(info.value)


def test_unknown_config_key_names_file_and_line(tmp_path: Path) -> None:
    conf = tmp_path / "ca.yaml"
    conf.write_text("listen: 127.0.0.1:1\nlisten-port: 5\n")
    with pytest.raises(ConfigError, match=r"ca.yaml:2: unknown key 'listen-port'"):
        read_config_file(conf)


def test_listen_accepts_ipv6() -> None:
    assert parse_listen("[::1]:15012") == ("::1", 15012)
