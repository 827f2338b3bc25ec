"""`meshward sidecar run|ingress`: the data path as processes."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

import click

from meshward_common import logs, ports
from meshward_common.addresses import parse_host_port
from meshward_common.durations import parse_duration
from meshward_common.errors import ConfigError, MeshwardError
from sidecar_tls.answers import REQUEST_TIMEOUT_S
from sidecar_tls.draining import DRAIN_S
from sidecar_tls.sidecar import (
    Ingress,
    IngressConfig,
    Sidecar,
    SidecarConfig,
    freeze_startup_heap,
)

# Shared by `run` and `ingress`.
_trace_sampling = click.option(
    "--trace-sampling",
    type=click.FloatRange(0.0, 100.0),
    default=1.0,
    show_default=True,
    help="Percent of new traces sampled (Istio's defaultConfig.tracing.sampling); parent-based.",
)


class _Seconds(click.ParamType[float, Any]):
    """A Go duration (`15s`, `1m30s`, `500ms`) as seconds; `0s` is none, as Envoy's `timeout: 0s`."""

    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float):
            return value
        try:
            return parse_duration(str(value), "value", zero=True).total_seconds()
        except ConfigError as exc:
            self.fail(str(exc).removeprefix("value: "), param, ctx)


# Shared by `run` and `ingress` (below _Seconds, their type).
_request_timeout = click.option(
    "--request-timeout",
    type=_Seconds(),
    default=f"{REQUEST_TIMEOUT_S:g}s",
    show_default=True,
    help="How long an upstream has to begin answering an HTTP request (Envoy's route timeout); "
    "then 504. 0s: no timeout. gRPC calls are bounded by their grpc-timeout instead.",
)
_drain_duration = click.option(
    "--drain-duration",
    type=_Seconds(),
    default=f"{DRAIN_S:g}s",
    show_default=True,
    help="On stop, how long HTTP/1.1 requests in flight (answered with connection: close) "
    "and open HTTP/2 and gRPC streams may finish (Istio's terminationDrainDuration); idle "
    "connections close at once; 0s: cut at once.",
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
        freeze_startup_heap()
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
@click.option(
    "--app-probers",
    envvar="ISTIO_KUBE_APP_PROBERS",
    default="",
    help="The app's rewritten HTTP probes (JSON, as the injector writes them), served on 15020.",
)
@_request_timeout
@_drain_duration
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
    app_probers: str,
    request_timeout: float,
    drain_duration: float,
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
        app_probers=app_probers,
        request_timeout=request_timeout,
        drain_s=drain_duration,
    )
    _run(Sidecar(config))


@sidecar.command("ingress")
@click.option(
    "--listen",
    default="127.0.0.1:8080",
    show_default=True,
    help="HOST:PORT for plain HTTP/1.1 and h2c.",
)
@click.option("--agent-socket", required=True, help="Node agent's Workload API socket.")
@click.option(
    "--route", required=True, help="HOST:PORT of the service to route to (e.g. productpage:9080)."
)
@click.option("--otlp-endpoint", default=None, help="OTLP/HTTP collector, as for `run`.")
@_trace_sampling
@click.option("--name", default="ingress", show_default=True, help="Name for telemetry.")
@click.option("--namespace", default="default", show_default=True)
@_request_timeout
@_drain_duration
@click.option("--log-level", default="INFO", show_default=True)
def ingress(
    listen: str,
    agent_socket: str,
    route: str,
    otlp_endpoint: str | None,
    trace_sampling: float,
    name: str,
    namespace: str,
    request_timeout: float,
    drain_duration: float,
    log_level: str,
) -> None:
    """Run the ingress gateway on the host: plain HTTP/1.1 or HTTP/2 (h2c prior knowledge, as
    gRPC clients send it) in, mTLS out with its own SVID (ALPN h2 for HTTP/2)."""
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
            request_timeout=request_timeout,
            drain_s=drain_duration,
        )
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    _run(Ingress(config))


@sidecar.command("init")
@click.option("-p", "--envoy-port", default=ports.OUTBOUND, show_default=True, type=int)
@click.option("-z", "--inbound-capture-port", default=ports.INBOUND, show_default=True, type=int)
@click.option("-u", "--proxy-uid", default=ports.PROXY_UID, show_default=True, type=int)
@click.option("-g", "--proxy-gid", default=ports.PROXY_GID, show_default=True, type=int)
@click.option(
    "-m",
    "--inbound-interception-mode",
    default="REDIRECT",
    show_default=True,
    help="REDIRECT only.",
)
@click.option(
    "-b", "--inbound-ports", default="*", show_default=True, help="Ports captured; * all."
)
@click.option(
    "-d",
    "--local-exclude-ports",
    default=f"{ports.PROMETHEUS},{ports.HEALTH},{ports.AGENT_STATUS}",
    show_default=True,
    help="Inbound ports never captured (with -b '*').",
)
@click.option("-i", "--outbound-ip-ranges", default="*", show_default=True, help="CIDRs; * all.")
@click.option("-x", "--outbound-ip-ranges-exclude", default="", help="CIDRs never captured.")
@click.option("-o", "--local-outbound-ports-exclude", default="", help="Ports never captured.")
def init(
    envoy_port: int,
    inbound_capture_port: int,
    proxy_uid: int,
    proxy_gid: int,
    inbound_interception_mode: str,
    inbound_ports: str,
    local_exclude_ports: str,
    outbound_ip_ranges: str,
    outbound_ip_ranges_exclude: str,
    local_outbound_ports_exclude: str,
) -> None:
    """istio-init: write this network namespace's capture rules (as root with NET_ADMIN/NET_RAW,
    before the app and the sidecar start). The flags are istio-iptables' own."""
    from meshward_common.capture_flags import parse_cidr_list, parse_port_list
    from sidecar_tls.interception.iptables import InterceptionOptions, apply_rules

    try:
        if inbound_interception_mode != "REDIRECT":
            raise ConfigError(
                f"interception: -m {inbound_interception_mode}: only REDIRECT is supported"
            )
        options = InterceptionOptions(
            proxy_uid=proxy_uid,
            proxy_gid=proxy_gid,
            outbound_port=envoy_port,
            inbound_port=inbound_capture_port,
            include_inbound_ports=parse_port_list(inbound_ports, "-b"),
            exclude_inbound_ports=parse_port_list(local_exclude_ports, "-d") or (),
            include_outbound_cidrs=parse_cidr_list(outbound_ip_ranges, "-i"),
            exclude_outbound_cidrs=parse_cidr_list(outbound_ip_ranges_exclude, "-x") or (),
            exclude_outbound_ports=parse_port_list(local_outbound_ports_exclude, "-o") or (),
        )
        click.echo(apply_rules(None, options), nl=False)
    except MeshwardError as exc:
        raise click.ClickException(str(exc)) from exc
