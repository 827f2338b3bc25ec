"""`meshward node run --kubernetes --node N`: the development node runner (see node_runner)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import click

from meshward_common.errors import MeshwardError


@click.group("node")
def node() -> None:
    """A development stand-in for a Kubernetes node (kubelet + runtime)."""


@node.command("run")
@click.option(
    "--kubernetes", is_flag=True, required=True, help="Take the Pods from the API server."
)
@click.option("--node", "node_name", required=True, help="The Node to register and run Pods of.")
@click.option(
    "--kubeconfig", type=click.Path(path_type=Path, dir_okay=False), help="Admin kubeconfig."
)
@click.option(
    "--root",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="This node's directory: hostPath volumes, pod files, container logs.",
)
@click.option("--prefix", default="mw", show_default=True, help="Pod network: netns <prefix>-*.")
@click.option(
    "--subnet",
    default="10.213.0.0/24",
    show_default=True,
    help="The bridge <prefix>-br's subnet (the bridge must exist).",
)
@click.option("--pod-cidr", required=True, help="The part of --subnet this node's pods get.")
@click.option("--log-level", default="INFO", show_default=True)
def run(node_name: str, kubeconfig: Path | None, root: Path, prefix: str, subnet: str,
        pod_cidr: str, log_level: str, kubernetes: bool) -> None:  # fmt: skip
    """Run the Pods bound to NODE, as the local mesh runs its pods (root).

    A TEST AND DEVELOPMENT TOOL, NOT A KUBELET: there are no images, so it runs only meshward's
    own commands (`meshward ...`, the meshward image's entrypoint) and the demo's apps
    (`python -m meshward.demo`); any other Pod is reported Failed with the reason. Each Pod gets
    a network namespace on the bridge (hostNetwork Pods: the host's), its processes in cgroups
    named as the kubelet names them (kubepods/<qos>/pod<uid>/<container>), init containers
    first, each container as its securityContext user, volumes mounted under /var/run/secrets
    only; status, podIP, conditions and phase are reported back, and a deleted Pod is removed."""
    from meshward.kube.node_runner import RunnerConfig, run_node

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        cfg = RunnerConfig(
            node=node_name, kubeconfig=kubeconfig, root=root.absolute(), prefix=prefix,
            subnet=subnet, pod_cidr=pod_cidr,
        )  # fmt: skip
        asyncio.run(run_node(cfg))
    except MeshwardError as exc:
        raise click.ClickException(str(exc)) from exc


@click.group("kube")
def kube() -> None:
    """A local Kubernetes control plane (the binaries `make kube` builds)."""


@kube.group("cluster")
def cluster() -> None:
    """etcd, kube-apiserver, kube-controller-manager and kube-scheduler on loopback."""


@cluster.command("run")
@click.option("--root", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Its directory: PKI, etcd data, logs, admin.kubeconfig.")  # fmt: skip
def cluster_run(root: Path) -> None:
    """Run the local cluster in the foreground until SIGTERM (what `meshward up --kubernetes`
    supervises); ROOT/admin.kubeconfig reaches it once it says it is ready."""
    import signal
    import threading

    from meshward.kube.cluster import LocalCluster, kube_bin_dir

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        local = LocalCluster(root.absolute(), kube_bin_dir(), controllers=True)
        local.start()
    except MeshwardError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        click.echo(f"kube cluster: API server at {local.server}, kubeconfig {local.kubeconfig}")
        stop.wait()
    finally:
        local.stop()
