"""`meshward sidecar run --request-timeout D --drain-duration D`: Go durations that reach both
proxies of the sidecar the command builds (`0s`: no request timeout, as Envoy's `timeout: 0s`), and
a bad value is one clear error, exit 2, before anything starts. What the proxies do with the
values on real sockets: test_request_timeout.py and test_drain.py."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from sidecar_tls import cli
from sidecar_tls.sidecar import Sidecar

_REQUIRED = (
    "--agent-socket",
    "/nonexistent/agent.sock",
    "--pod-ip",
    "127.0.0.1",
    "--workload",
    "w",
)


def _built(monkeypatch: pytest.MonkeyPatch, *flags: str) -> Sidecar:
    """The Sidecar `meshward sidecar run FLAGS` builds, captured instead of run."""
    built: list[Any] = []
    monkeypatch.setattr(cli, "_run", built.append)
    result = CliRunner().invoke(cli.sidecar, ["run", *_REQUIRED, *flags])
    assert result.exit_code == 0, result.output
    (sidecar,) = built
    assert isinstance(sidecar, Sidecar)
    return sidecar


def _timeouts(sidecar: Sidecar) -> set[tuple[float, float]]:
    return {(proxy.request_timeout, proxy.drain_s) for proxy in (sidecar.outbound, sidecar.inbound)}


def test_the_defaults_are_envoys_route_timeout_and_istios_drain_duration(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert _timeouts(_built(monkeypatch)) == {(15.0, 5.0)}


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (("--request-timeout", "1m30s", "--drain-duration", "45s"), (90.0, 45.0)),
        (("--request-timeout", "500ms", "--drain-duration", "2s"), (0.5, 2.0)),
        (("--request-timeout", "0s"), (0.0, 5.0)),  # no timeout at all, as Envoy's `timeout: 0s`
        (("--request-timeout", "0"), (0.0, 5.0)),  # Go's ParseDuration reads a bare 0
        (("--drain-duration", "0s"), (15.0, 0.0)),  # cut at once
    ],
)
def test_the_durations_reach_both_proxies(
    monkeypatch: pytest.MonkeyPatch, flags: tuple[str, ...], expected: tuple[float, float]
) -> None:
    sidecar = _built(monkeypatch, *flags)
    assert _timeouts(sidecar) == {expected}
    assert (sidecar.config.request_timeout, sidecar.config.drain_s) == expected


@pytest.mark.parametrize("flag", ["--request-timeout", "--drain-duration"])
@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("15", "give a unit: 30s, not 30"),
        ("-1s", "is not a duration"),
        ("1.5s", "is not a duration"),
        ("soon", "is not a duration"),
        ("", "is not a duration"),
    ],
)
def test_a_bad_duration_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, flag: str, value: str, reason: str
) -> None:
    started: list[Any] = []
    monkeypatch.setattr(cli, "_run", started.append)
    result = CliRunner().invoke(cli.sidecar, ["run", *_REQUIRED, flag, value])
    assert result.exit_code == 2
    assert started == []  # refused before a sidecar is built
    assert result.exception is None or isinstance(result.exception, SystemExit)
    (error,) = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert f"'{flag}'" in error
    assert repr(value) in error
    assert reason in error
    assert "Traceback" not in result.output


def test_the_flags_are_documented_in_the_help() -> None:
    help_text = CliRunner().invoke(cli.sidecar, ["run", "--help"]).output
    assert "--request-timeout DURATION" in help_text
    assert "--drain-duration DURATION" in help_text
