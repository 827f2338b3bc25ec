"""The mesh's processes, in start order, and the command line of each.

Pure: the spec and the state layout in, argv out. Components are run only through their CLIs
(`python -m meshward ca serve`, `agent run`, `sidecar run`, `sidecar ingress`), never imported.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Literal

from meshward.jaeger import JaegerListen
from meshward.jaeger import jaeger_config as render_jaeger_config
from meshward.mesh.layout import StateLayout
from meshward.mesh.network import command_in_pod
from meshward.mesh.spec import APP_PORT, MeshSpec
from meshward_common import ports

Kind = Literal["jaeger", "control-plane", "agent", "sidecar", "app", "ingress", "kube", "node"]
TRUST_BUNDLE = "trust-bundle.pem"  # written by `ca serve` into its state dir


@dataclass(frozen=True)
class Component:
    name: str  # what `meshward logs <name>` takes
    kind: Kind
    node: str = ""
    pod: str = ""


@dataclass(frozen=True)
class JaegerPorts:
    otlp_http: int
    query_http: int
    query_grpc: int

    @classmethod
    def of(cls, spec: MeshSpec) -> JaegerPorts:
        o = spec.options
        return cls(o.jaeger_otlp_port, o.jaeger_query_port, o.jaeger_query_grpc_port)


def components(spec: MeshSpec, *, jaeger: bool) -> list[Component]:
    out: list[Component] = [Component("jaeger", "jaeger")] if jaeger else []
    out.append(Component("control-plane", "control-plane"))
    out += [Component(f"agent-{node}", "agent", node=node) for node in spec.nodes]
    for pod in spec.pods:
        out.append(Component(f"sidecar-{pod.name}", "sidecar", node=pod.node, pod=pod.name))
        out.append(Component(f"app-{pod.name}", "app", node=pod.node, pod=pod.name))
    out.append(Component("ingress", "ingress", node=spec.ingress_node))
    return out


def meshward_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "meshward", *args]


def control_plane_address(spec: MeshSpec) -> str:
    return f"127.0.0.1:{spec.options.control_plane_port}"


def trust_bundle(layout: StateLayout) -> str:
    return str(layout.ca_dir / TRUST_BUNDLE)


def join_token_file(layout: StateLayout, node: str) -> str:
    return str(layout.root / "agents" / f"{node}.token")


def otlp_endpoint(spec: MeshSpec, jaeger: JaegerPorts) -> str:
    # Pods reach the host only through the bridge address, so Jaeger listens there (and only
    # there: the host's own sidecar-less processes use the same address).
    return f"http://{spec.bridge_ip}:{jaeger.otlp_http}"


def control_plane_argv(spec: MeshSpec, layout: StateLayout) -> list[str]:
    return meshward_cli(
        "ca", "serve",
        "--state-dir", str(layout.ca_dir),
        "--registry", str(layout.registry),
        "--policy-dir", str(layout.policies),
        "--listen", control_plane_address(spec),
        "--trust-domain", spec.options.trust_domain,
        "--workload-ttl", spec.options.workload_ttl,
    )  # fmt: skip


def join_token_argv(layout: StateLayout, node: str) -> list[str]:
    """Mint NODE's token into its token file (0600); the agent reads it from there, never argv."""
    return meshward_cli(
        "ca", "join-token", "--state-dir", str(layout.ca_dir), "--node", node,
        "--out", join_token_file(layout, node),
    )  # fmt: skip


def agent_argv(spec: MeshSpec, layout: StateLayout, node: str) -> list[str]:
    return meshward_cli(
        "agent", "run",
        "--node", node,
        "--ca-address", control_plane_address(spec),
        "--state-dir", str(layout.agent_dir(node)),
        "--socket", str(layout.agent_socket(node)),
        "--trust-bundle", trust_bundle(layout),
        "--join-token-file", join_token_file(layout, node),
        "--workload-ttl", spec.options.workload_ttl,
    )  # fmt: skip


def sidecar_argv(
    spec: MeshSpec, layout: StateLayout, pod_name: str, jaeger: JaegerPorts | None
) -> list[str]:
    pod = spec.pod(pod_name)
    argv = meshward_cli(
        "sidecar", "run",
        "--agent-socket", str(layout.agent_socket(pod.node)),
        "--pod-ip", pod.ip,
        "--workload", pod.name,
        "--namespace", pod.namespace,
        "--trace-sampling", "100",  # Istio's demo profile traces every request
    )  # fmt: skip
    if jaeger:
        argv += ["--otlp-endpoint", otlp_endpoint(spec, jaeger)]
    return command_in_pod(spec, pod, argv, uid=ports.PROXY_UID)


def app_argv(spec: MeshSpec, pod_name: str) -> list[str]:
    pod = spec.pod(pod_name)
    argv = [sys.executable, "-m", "meshward.demo", pod.service, "--version", pod.version]
    argv += ["--port", str(APP_PORT), "--pod", pod.name]
    return command_in_pod(spec, pod, argv, uid=spec.options.app_uid)


def ingress_argv(spec: MeshSpec, layout: StateLayout, jaeger: JaegerPorts | None) -> list[str]:
    uid = str(spec.options.ingress_uid)
    argv = ["setpriv", "--reuid", uid, "--regid", uid, "--clear-groups", "--"]
    argv += meshward_cli(
        "sidecar", "ingress",
        "--listen", f"127.0.0.1:{spec.options.ingress_port}",
        "--agent-socket", str(layout.agent_socket(spec.ingress_node)),
        "--route", f"{spec.productpage.ip}:{APP_PORT}",
        "--trace-sampling", "100",  # Istio's demo profile traces every request
    )  # fmt: skip
    if jaeger:
        argv += ["--otlp-endpoint", otlp_endpoint(spec, jaeger)]
    return argv


def jaeger_config(spec: MeshSpec, ports_: JaegerPorts) -> str:
    # Pods reach the host only through the bridge address, so OTLP listens there (the query API
    # stays on loopback).
    listen = JaegerListen(
        otlp_http=f"{spec.bridge_ip}:{ports_.otlp_http}",
        query_http=f"127.0.0.1:{ports_.query_http}",
        query_grpc=f"127.0.0.1:{ports_.query_grpc}",
    )
    return render_jaeger_config(listen, max_traces=100000, batch_timeout_ms=200)
