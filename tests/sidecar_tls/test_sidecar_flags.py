"""`meshward sidecar run|ingress --request-timeout D --drain-duration D`: Go durations that reach
every proxy of the sidecar (both) or ingress gateway (its one) the command builds (`0s`: no request
timeout, as Envoy's `timeout: 0s`), and a bad value is one clear error, exit 2, before anything
starts. What the proxies do with the values on real sockets: test_request_timeout.py,
test_drain.py and test_drain_http1.py."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from sidecar_tls import cli
from sidecar_tls.sidecar import Ingress, Sidecar

# Each command with its required options.
_COMMANDS = {
    "run": (
        "run",
        "--agent-socket",
        "/nonexistent/agent.sock",
        "--pod-ip",
        "127.0.0.1",
        "--workload",
        "w",
    ),
    "ingress": ("ingress", "--agent-socket", "/nonexistent/agent.sock", "--route", "p:9080"),
}
COMMANDS = pytest.mark.parametrize("command", sorted(_COMMANDS))


def _built(monkeypatch: pytest.MonkeyPatch, command: str, *flags: str) -> Sidecar | Ingress:
    """The Sidecar or Ingress `meshward sidecar COMMAND FLAGS` builds, captured instead of run."""
    built: list[Any] = []
    monkeypatch.setattr(cli, "_run", built.append)
    result = CliRunner().invoke(cli.sidecar, [*_COMMANDS[command], *flags])
    assert result.exit_code == 0, result.output
    (component,) = built
    assert isinstance(component, Sidecar if command == "run" else Ingress)
    return component


def _timeouts(component: Sidecar | Ingress) -> set[tuple[float, float]]:
    proxies = (
        (component.outbound, component.inbound)
        if isinstance(component, Sidecar)
        else (component.proxy,)
    )
    return {(proxy.request_timeout, proxy.drain_s) for proxy in proxies}


@COMMANDS
def test_the_defaults_are_envoys_route_timeout_and_istios_drain_duration(
    monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    assert _timeouts(_built(monkeypatch, command)) == {(15.0, 5.0)}


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
@COMMANDS
def test_the_durations_reach_every_proxy(
    monkeypatch: pytest.MonkeyPatch,
    command: str,
    flags: tuple[str, ...],
    expected: tuple[float, float],
) -> None:
    component = _built(monkeypatch, command, *flags)
    assert _timeouts(component) == {expected}
    assert (component.config.request_timeout, component.config.drain_s) == expected


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
@COMMANDS
def test_a_bad_duration_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, command: str, flag: str, value: str, reason: str
) -> None:
    started: list[Any] = []
    monkeypatch.setattr(cli, "_run", started.append)
    result = CliRunner().invoke(cli.sidecar, [*_COMMANDS[command], flag, value])
    assert result.exit_code == 2
    assert started == []  # refused before a sidecar is built
    assert result.exception is None or isinstance(result.exception, SystemExit)
    (error,) = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert f"'{flag}'" in error
    assert repr(value) in error
    assert reason in error
    assert "Traceback" not in result.output


@COMMANDS
def test_the_flags_are_documented_in_the_help(command: str) -> None:
    help_text = CliRunner().invoke(cli.sidecar, [command, "--help"]).output
    assert "--request-timeout DURATION" in help_text
    assert "--drain-duration DURATION" in help_text
    assert "HTTP/1.1 requests in flight" in " ".join(help_text.split())  # drained too
