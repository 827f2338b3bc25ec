"""`meshward up/down/status/logs/exec/proxy-config/check`: the local mesh and its inspection.

Registered in `meshward/cli.py` as the commands `up`, `down`, `status`, `logs`, `exec_`,
`proxy_config` and `check` of this module. Every command takes `--state-dir` (or
$MESHWARD_STATE_DIR); everything but `up` reads the rest from the mesh started there.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from meshward.inspect.checks import render
from meshward.inspect.gather import MeshView, pod_secret, run_checks, status_table
from meshward.mesh import components as cmd
from meshward.mesh.launcher import Launcher, UpReport, require_net_admin
from meshward.mesh.network import command_in_pod
from meshward.mesh.spec import MeshOptions, MeshSpec
from meshward_common.clock import utc_now
from meshward_common.errors import MeshwardError

DEFAULT_STATE_DIR = "/var/run/meshward"
F = TypeVar("F", bound=Callable[..., Any])


def _one_line_errors(fn: F) -> F:
    """A MeshwardError is one line on stderr and exit status 1, never a traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MeshwardError as exc:
            click.echo(str(exc), err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


state_dir_option = click.option(
    "--state-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=DEFAULT_STATE_DIR,
    envvar="MESHWARD_STATE_DIR",
    show_default=True,
    help="Where the mesh keeps its state, sockets and logs.",
)


@click.command("up")
@state_dir_option
@click.option("--prefix", default="mw", show_default=True, help="Names of netns/links: <prefix>-*.")
@click.option("--subnet", default="10.213.0.0/24", show_default=True)
@click.option("--ingress-port", default=8080, show_default=True, type=int)
@click.option("--control-plane-port", default=15012, show_default=True, type=int)
@click.option("--webhook-port", default=15017, show_default=True, type=int,
              help="With --kubernetes: the injection webhook (loopback).")  # fmt: skip
@click.option("--workload-ttl", default="1h", show_default=True)
@click.option("--jaeger/--no-jaeger", default=True, show_default=True, help="Run Jaeger if found.")
@click.option(
    "--jaeger-otlp-port", default=4318, show_default=True, type=int, help="Jaeger's OTLP/HTTP port."
)
@click.option("--jaeger-query-port", default=16686, show_default=True, type=int)
@click.option("--jaeger-query-grpc-port", default=16685, show_default=True, type=int)
@click.option(
    "--kubernetes", is_flag=True,
    help="On a real API server: manifests applied, the demo as Pods injected by the webhook, run "
    "by two development node runners (`make up MESH=kubernetes`).",
)  # fmt: skip
@click.option(
    "--timeout",
    "timeout_s",
    type=float,
    help="Seconds to wait (default 30; 240 with --kubernetes).",
)
@_one_line_errors
def up(state_dir: Path, timeout_s: float | None, **opts: Any) -> None:
    """Start the local mesh (root or CAP_NET_ADMIN); a second run reports it and heals it."""
    require_net_admin("up")
    launcher = Launcher(MeshOptions(state_dir=state_dir.absolute(), **opts), say=click.echo)
    if timeout_s is None:
        timeout_s = 240.0 if launcher.options.kubernetes else 30.0
    report = launcher.up(ready_timeout_s=timeout_s)
    click.echo(_up_summary(launcher.spec, report))
    if report.not_ready:
        sys.exit(1)


def _policy_hint(o: MeshOptions) -> tuple[str, str]:
    if o.kubernetes:
        from meshward.kube.cluster import kube_bin_dir

        kubectl = f"{kube_bin_dir()}/kubectl --kubeconfig {o.state_dir}/kube/admin.kubeconfig"
        return (f"{kubectl} apply -f <policy.yaml>", "Istio AuthorizationPolicy, in seconds")
    return (
        f"cp <policy.yaml> {o.state_dir}/policies/",
        "Istio AuthorizationPolicy, applied in seconds",
    )


def _up_summary(spec: MeshSpec, report: UpReport) -> str:
    o = spec.options
    state = f" --state-dir {o.state_dir}" if str(o.state_dir) != DEFAULT_STATE_DIR else ""
    head = "the mesh is already running" if report.already_running else "the mesh is up"
    if report.already_running and report.started:
        head = f"the mesh was running; restarted {', '.join(report.started)}"
    where = " from the Kubernetes API" if o.kubernetes else ""
    lines = [f"meshward: {head} ({len(spec.pods)} pods on {', '.join(spec.nodes)}{where})"]
    if report.not_ready:
        lines[0] = "meshward: the mesh is NOT ready:"
        lines += [f"  {p}" for p in report.not_ready]
        lines.append(f"  logs: meshward logs <component>{state}   (files in {o.state_dir}/logs)")
        return "\n".join(lines)
    hints = [
        (f"curl localhost:{o.ingress_port}/productpage", "the page, each hop's caller identity, the trace id"),
        (f"meshward status{state}", "nodes, pods, identities, certificate expiry, readiness"),
        (f"meshward exec{state} productpage -- curl -s http://reviews:9080/reviews/1", "a call through both sidecars"),
        (f"meshward exec{state} reviews-v1 -- python -m meshward.demo.rpc ratings:9090 GetRating 1", "a gRPC call (reviews' own hop)"),
        (f"meshward proxy-config secret{state} productpage", "the pod's SVID, chain and bundle"),
        (f"meshward check{state}", "is everything healthy, and what to do if not"),
        (f"meshward logs{state} <component>", f"logs of every process ({o.state_dir}/logs/)"),
        _policy_hint(o),
    ]  # fmt: skip
    if report.jaeger:
        hints.append(
            ("meshward traces", f"the traces (Jaeger query at 127.0.0.1:{o.jaeger_query_port})")
        )
    else:
        hints.append(("make jaeger", "no Jaeger binary was found: traces are off"))
    hints.append((f"meshward down{state}", "remove everything"))
    width = max(len(cmd_) for cmd_, _ in hints)
    lines.append("where to look next:")
    lines += [f"  {cmd_.ljust(width)}   # {what}" for cmd_, what in hints]
    return "\n".join(lines)


@click.command("down")
@state_dir_option
@click.option("--prefix", default="mw", show_default=True, help="Used when no mesh state is left.")
@click.option("--subnet", default="10.213.0.0/24", show_default=True)
@_one_line_errors
def down(state_dir: Path, prefix: str, subnet: str) -> None:
    """Stop every process and remove every namespace, link, hosts file and rule of the mesh."""
    require_net_admin("down")
    options = MeshOptions(state_dir=state_dir.absolute(), prefix=prefix, subnet=subnet)
    left = Launcher(options, say=click.echo).down()
    if left:
        click.echo("meshward down: could not remove: " + ", ".join(left), err=True)
        sys.exit(1)
    click.echo("meshward: the mesh is down; nothing is left")


@click.command("status")
@state_dir_option
@_one_line_errors
def status(state_dir: Path) -> None:
    """Nodes, pods, their identities, certificate expiry and readiness, in one table."""
    click.echo(status_table(MeshView.open(state_dir), utc_now()))


@click.command("logs")
@state_dir_option
@click.argument("component", required=False)
@click.option("-f", "--follow", is_flag=True, help="Keep printing as the log grows.")
@click.option("-n", "--lines", default=200, show_default=True, help="Last lines to show.")
@_one_line_errors
def logs(state_dir: Path, component: str | None, follow: bool, lines: int) -> None:
    """Show a component's log (a pod name shows its sidecar and app); no name lists them."""
    view = MeshView.open(state_dir)
    if view.kube_pods is not None:
        paths = _kube_logs(view, component)
    else:
        names = [c.name for c in cmd.components(view.spec, jaeger=True)]
        if component is None:
            click.echo("components: " + " ".join(names))
            return
        wanted = [component] if component in names else [f"sidecar-{component}", f"app-{component}"]
        paths = [view.layout.log(n) for n in wanted if view.layout.log(n).exists()]
        if not paths:
            raise click.UsageError(f"no log for {component!r}; components: {' '.join(names)}")
    if not paths:
        return
    if follow:
        os.execvp("tail", ["tail", "-n", str(lines), "-F", *map(str, paths)])  # noqa: S606
    for path in paths:
        if len(paths) > 1:
            click.echo(f"==> {path.stem.replace('_', '/')} <==")
        click.echo("\n".join(path.read_text(errors="replace").splitlines()[-lines:]))


def _kube_logs(view: MeshView, component: str | None) -> list[Path]:
    """On Kubernetes: a supervised process's log, or a Pod's containers' logs (its node
    runner's files `<namespace>_<pod>_<container>.log`; a pod of the demo by its name)."""
    from meshward.mesh.kube_launcher import components, records

    names = [c.name for c in components(view.spec, jaeger=True)]
    pods = {str(r["name"]): r for r in records(view.layout)}
    if component is None:
        click.echo("components: " + " ".join(names))
        click.echo("pods: " + " ".join(sorted(pods)))
        return []
    if component in names:
        return [view.layout.log(component)]
    if component not in pods:
        known = " ".join([*names, *sorted(pods)])
        raise click.UsageError(f"no log for {component!r}; components and pods: {known}")
    logs = [Path(c["log"]) for c in pods[component]["containers"].values()]
    return [p for p in logs if p.exists()]


@click.command("exec", context_settings={"ignore_unknown_options": True})
@state_dir_option
@click.option("--root", "as_root", is_flag=True, help="Run as root instead of the app's user.")
@click.argument("pod")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@_one_line_errors
def exec_(state_dir: Path, as_root: bool, pod: str, command: tuple[str, ...]) -> None:
    """Run COMMAND inside POD as its app user (its traffic goes through the pod's sidecar)."""
    require_net_admin("exec")
    view = MeshView.open(state_dir)
    spec = view.spec
    uid = None if as_root else spec.options.app_uid
    argv = command_in_pod(spec, spec.pod(pod), list(command), uid=uid)
    sys.stdout.flush()
    os.execvp(argv[0], argv)  # noqa: S606 - becoming the command is what exec means


@click.group("proxy-config")
def proxy_config() -> None:
    """What a pod's sidecar holds (as `istioctl proxy-config`)."""


@proxy_config.command("secret")
@state_dir_option
@click.argument("pod")
@click.option("-o", "--output", type=click.Choice(["short", "json"]), default="short")
@_one_line_errors
def secret(state_dir: Path, pod: str, output: str) -> None:
    """The pod's SVID: SPIFFE ID, serial, validity, chain and trust bundle."""
    view = pod_secret(MeshView.open(state_dir), pod, utc_now())
    if output == "json":
        click.echo(json.dumps(view.as_json(), indent=2))
    else:
        click.echo(view.table())


@click.command("check")
@state_dir_option
@_one_line_errors
def check(state_dir: Path) -> None:
    """Control plane reachable, CA validity, every sidecar's chain and expiry, policy files."""
    results = run_checks(MeshView.open(state_dir), utc_now())
    click.echo(render(results))
    if not all(r.ok for r in results):
        sys.exit(1)


COMMANDS = (up, down, status, logs, exec_, proxy_config, check)


@click.group()
def standalone() -> None:
    """These commands alone (`python -m meshward.mesh_cli`), for before they are registered."""


for _command in COMMANDS:
    standalone.add_command(_command)

if __name__ == "__main__":
    standalone()
