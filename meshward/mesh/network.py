"""The mesh's pods in the kernel: thin adapter over `meshward.pods` and istio-init's rules."""

from __future__ import annotations

from collections.abc import Sequence

from meshward.mesh.spec import MeshSpec, PodSpec
from meshward.pods import NETNS_ETC, Pod, PodNetwork, list_links, list_netns
from sidecar_tls.interception.iptables import InterceptionOptions, apply_rules


def pod_network(spec: MeshSpec) -> PodNetwork:
    return PodNetwork(spec.options.prefix, spec.options.subnet)


def build_network(spec: MeshSpec) -> PodNetwork:
    """Bridge, one netns per pod at its spec IP, hosts files, and each pod's interception rules
    (written before any process starts in it, as istio-init does)."""
    net = pod_network(spec).create()
    for pod in spec.pods:
        net.add_pod(pod.name, pod.ip)
    net.set_hosts(spec.hosts())
    for pod in spec.pods:
        apply_rules(pod.netns, InterceptionOptions())
    return net


def pod_handle(spec: MeshSpec, pod: PodSpec) -> Pod:
    """The `meshward.pods` view of a pod that exists in the kernel (for building commands)."""
    return Pod(name=pod.name, netns=pod.netns, ip=pod.ip, veth_host="")


def command_in_pod(
    spec: MeshSpec, pod: PodSpec, argv: Sequence[str], *, uid: int | None
) -> list[str]:
    return pod_network(spec).command(pod_handle(spec, pod), argv, uid=uid, gid=uid)


def network_exists(spec: MeshSpec) -> bool:
    names = set(list_netns())
    return f"{spec.options.prefix}-br" in list_links() and all(p.netns in names for p in spec.pods)


def leftovers(prefix: str) -> list[str]:
    """Every netns, link and hosts dir still named with the prefix (empty after a clean down)."""

    mark = f"{prefix}-"
    found = [f"netns {n}" for n in list_netns() if n.startswith(mark)]
    found += [f"link {n}" for n in list_links() if n.startswith(mark)]
    if NETNS_ETC.is_dir():
        found += [f"hosts {p}" for p in NETNS_ETC.iterdir() if p.name.startswith(mark)]
    return found


def remove_network(prefix: str) -> None:
    PodNetwork.cleanup_prefix(prefix)
