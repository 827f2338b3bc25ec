"""`meshward agent run`: the node agent's command line."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from meshward_common import logs
from meshward_common.errors import ConfigError, MeshwardError
from node_agent.agent import NodeAgent
from node_agent.config import AgentConfig, build_config, load_config_file
from node_agent.metrics import AgentMetrics, start_metrics_server


@click.group("agent")
def agent() -> None:
    """Node agent: node identity, workload attestation, the SPIFFE Workload API."""


@agent.command("run")
@click.option("--node", help="This node's name, as the registry's `node:` fields use it.")
@click.option("--ca-address", help="Control plane HOST:PORT (default 127.0.0.1:15012).")
@click.option("--state-dir", type=click.Path(path_type=Path), help="Node key and SVID live here.")
@click.option("--socket", type=click.Path(path_type=Path), help="Workload API socket path.")
@click.option(
    "--trust-bundle", type=click.Path(path_type=Path), help="CA roots (PEM) for bootstrap."
)
@click.option(
    "--join-token-file",
    help="File (mode 0600, owned by this user) holding the one-time join token for the first "
    "node certificate; - reads it from stdin. Never on the command line: others can read that.",
)
@click.option(
    "--kubernetes", is_flag=True, default=None,
    help="Run as a DaemonSet pod: bootstrap with the projected ServiceAccount token "
    "(--token-file, default /var/run/secrets/tokens/istio-token, audience istio-ca); "
    "workloads are attested by the kubelet's pod cgroups.",
)  # fmt: skip
@click.option("--token-file", type=click.Path(path_type=Path), help="ServiceAccount token file.")
@click.option("--workload-ttl", help="Requested workload SVID validity, e.g. 30s, 24h.")
@click.option("--log-level", help="DEBUG, INFO, WARNING (default INFO).")
@click.option("--metrics-listen", help="HOST:PORT for Prometheus metrics (default: off).")
@click.option(
    "--config", "config_file", type=click.Path(path_type=Path), help="YAML file, same keys."
)
def run(config_file: Path | None, **flags: Any) -> None:
    """Serve the Workload API on a Unix socket until SIGTERM."""
    try:
        file_values = load_config_file(config_file) if config_file else {}
        config = build_config(flags, file_values)
    except ConfigError as exc:
        _fail(str(exc))
    logs.setup("agent", config.log_level)
    try:
        asyncio.run(_serve(config))
    except MeshwardError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))


def _fail(message: str) -> NoReturn:
    """One line on stderr saying what is wrong, then exit 1 (no traceback)."""
    click.echo(f"meshward agent: error: {message}", err=True)
    sys.exit(1)


async def _serve(config: AgentConfig) -> None:
    metrics = None
    if config.metrics_listen is not None:
        metrics = AgentMetrics()
        host, port = start_metrics_server(*config.metrics_listen, metrics)
        click.echo(f"meshward agent: metrics on http://{host}:{port}/metrics")
    node_agent = NodeAgent(config, metrics=metrics)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await node_agent.start()
    click.echo(f"meshward agent: serving Workload API on {config.socket_path}", nl=True)
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            await node_agent.stop()
