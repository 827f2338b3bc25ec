"""Durations: one parser for the CA's and the agent's flags and files.

The two copies disagreed on a bare number (`30`: the CA took it as seconds, the agent refused it).
The meaning kept is Go's `time.ParseDuration`, which Istio's and Kubernetes' flags use: a number
needs its unit.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from ca.config import build_config as ca_config
from meshward_common.durations import format_duration, parse_duration
from meshward_common.errors import ConfigError
from node_agent.config import build_config as agent_config


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("5m", 300),
        ("10m", 600),
        ("24h", 86400),
        ("1h30m", 5400),
        ("2d", 172800),
        ("500ms", 0.5),
        ("1500ms", 1.5),
        (" 10m ", 600),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text, "--x") == dt.timedelta(seconds=seconds)


@pytest.mark.parametrize(
    "text", ["", "0", "0s", "30", "45", "h", "s", "1x", "-5s", "1h 30m", "5s ago", "1.5h"]
)
def test_bad_durations_name_the_option(text: str) -> None:
    with pytest.raises(ConfigError, match="--x"):
        parse_duration(text, "--x")


def test_a_bare_number_is_refused_with_a_hint() -> None:
    with pytest.raises(ConfigError) as info:
        parse_duration("30", "--workload-ttl")
    assert str(info.value) == (
        "--workload-ttl: '30' is not a duration like 30s, 10m, 24h or 1h30m (give a unit: 30s, not 30)"
    )


def test_ca_and_agent_read_durations_alike(tmp_path: Path) -> None:
    for text in ("30", "1.5h"):
        with pytest.raises(ConfigError, match="is not a duration"):
            ca_config({"workload-ttl": text, "state-dir": str(tmp_path)})
        with pytest.raises(ConfigError, match="is not a duration"):
            agent_config({"node": "n", "state_dir": "/s", "workload_ttl": text}, {})
    ca = ca_config({"workload-ttl": "90m", "max-ttl": "2h", "state-dir": str(tmp_path)})
    agent = agent_config({"node": "n", "state_dir": "/s", "workload_ttl": "90m"}, {})
    assert ca.workload_ttl == agent.workload_ttl == dt.timedelta(minutes=90)


def test_format_duration_round_trips() -> None:
    for text in ("30s", "10m", "24h"):
        assert format_duration(parse_duration(text)) == text


@pytest.mark.parametrize("text", ["0", "0s", "0ms", "0m0s", " 0s "])
def test_zero_is_a_duration_only_where_it_is_allowed(text: str) -> None:
    assert parse_duration(text, "--x", zero=True) == dt.timedelta(0)
    with pytest.raises(ConfigError, match="--x"):
        parse_duration(text, "--x")


def test_allowing_zero_still_refuses_what_is_not_a_duration() -> None:
    for text in ("", "00", "30", "-0s", "0x"):
        with pytest.raises(ConfigError, match="--x"):
            parse_duration(text, "--x", zero=True)
