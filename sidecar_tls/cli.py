"""`meshward sidecar run|ingress`: the data path as processes."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

import click

from meshward_common import logs
from meshward_common.addresses import parse_host_port
from meshward_common.errors import ConfigError
from sidecar_tls.sidecar import Ingress, IngressConfig, Sidecar, SidecarConfig

# Shared by `run` and `ingress`.
_trace_sampling = click.option(
    "--trace-sampling",
    type=click.FloatRange(0.0, 100.0),
    default=1.0,
    show_default=True,
    help="Percent of new traces sampled (Istio's defaultConfig.tracing.sampling); parent-based.",
)


@click.group()
def sidecar() -> None:
    """The sidecar data path (mTLS outbound 15001 / inbound 15006) and the ingress gateway."""


def _run(component: Any) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await component.start()
        try:
            await stop.wait()
        finally:
            await component.stop()

    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # uvloop is pinned; plain asyncio still works, only slower
        runner = asyncio.Runner()
    with runner, contextlib.suppress(KeyboardInterrupt):
        try:
            runner.run(main())
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from exc


@sidecar.command("run")
@click.option("--agent-socket", required=True, help="Node agent's Workload API socket.")
@click.option("--pod-ip", required=True, help="This pod's IP (where the app listens).")
@click.option("--workload", required=True, help="This workload's name in the registry.")
@click.option("--namespace", default="default", show_default=True)
@click.option(
    "--outbound-policy",
    type=click.Choice(["ALLOW_ANY", "REGISTRY_ONLY"]),
    default="ALLOW_ANY",
    show_default=True,
    help="Destinations outside the mesh: pass through in plaintext, or refuse.",
)
@click.option(
    "--otlp-endpoint",
    default=None,
    help="OTLP/HTTP collector (spans go to <URL>/v1/traces), e.g. http://127.0.0.1:4318; "
    "default: $OTEL_EXPORTER_OTLP_ENDPOINT.",
)
@_trace_sampling
@click.option(
    "--service", default="", help="Service name for telemetry (default: workload without -vN)."
)
@click.option("--log-level", default="INFO", show_default=True)
def run(
    agent_socket: str,
    pod_ip: str,
    workload: str,
    namespace: str,
    outbound_policy: str,
    otlp_endpoint: str | None,
    trace_sampling: float,
    service: str,
    log_level: str,
) -> None:
    """Run the sidecar in this pod's namespace (as uid 1337, after the interception rules)."""
    logs.setup("sidecar", log_level)
    config = SidecarConfig(
        agent_socket=agent_socket,
        pod_ip=pod_ip,
        workload=workload,
        namespace=namespace,
        outbound_policy="REGISTRY_ONLY" if outbound_policy == "REGISTRY_ONLY" else "ALLOW_ANY",
        otlp_endpoint=otlp_endpoint,
        trace_sampling=trace_sampling,
        service=service,
    )
    _run(Sidecar(config))


@sidecar.command("ingress")
@click.option(
    "--listen", default="127.0.0.1:8080", show_default=True, help="HOST:PORT for plain HTTP."
)
@click.option("--agent-socket", required=True, help="Node agent's Workload API socket.")
@click.option(
    "--route", required=True, help="HOST:PORT of the service to route to (e.g. productpage:9080)."
)
@click.option("--otlp-endpoint", default=None, help="OTLP/HTTP collector, as for `run`.")
@_trace_sampling
@click.option("--name", default="ingress", show_default=True, help="Name for telemetry.")
@click.option("--namespace", default="default", show_default=True)
@click.option("--log-level", default="INFO", show_default=True)
def ingress(
    listen: str,
    agent_socket: str,
    route: str,
    otlp_endpoint: str | None,
    trace_sampling: float,
    name: str,
    namespace: str,
    log_level: str,
) -> None:
    """Run the ingress gateway on the host: plain HTTP in, mTLS out with its own SVID."""
    logs.setup("ingress", log_level)
    try:
        config = IngressConfig(
            agent_socket=agent_socket,
            listen=parse_host_port(listen, "--listen"),
            route=parse_host_port(route, "--route"),
            otlp_endpoint=otlp_endpoint,
            trace_sampling=trace_sampling,
            name=name,
            namespace=namespace,
        )
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    _run(Ingress(config))
