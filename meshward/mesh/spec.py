"""What the local mesh is made of: nodes, pods, service accounts, IPs, and the registry for the CA.

Pure: a `MeshOptions` in, a `MeshSpec` out; the registry YAML is rendered from the spec, so the
launcher, `down`, `status` and `exec` all agree on names without looking at the kernel.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from meshward.demo import GRPC_PORT  # ratings' gRPC service, which reviews calls
from meshward_common import ports
from meshward_common.errors import ConfigError
from meshward_common.registry import HOST_NETNS, Registry, Selector, Workload, dump_registry
from meshward_common.spiffe_id import DEFAULT_TRUST_DOMAIN, validate_name, workload_id

NODES = ("node-1", "node-2")
APP_NAMESPACE = "default"
INGRESS_NAMESPACE = "istio-system"
INGRESS_NAME = "ingress"
INGRESS_SERVICE_ACCOUNT = "meshward-ingress"
APP_PORT = 9080
# Each demo service's ports by Istio's port names (the name says the protocol).
SERVICE_PORTS: dict[str, tuple[tuple[str, int], ...]] = {
    "productpage": (("http", APP_PORT),),
    "details": (("http", APP_PORT),),
    "reviews": (("http", APP_PORT),),
    "ratings": (("http", APP_PORT), ("grpc", GRPC_PORT)),
}
# Link names are "<prefix>-br" and "<prefix>-v<n>" and must fit IFNAMSIZ (as meshward.pods checks).
_PREFIX_RE = re.compile(r"[a-z][a-z0-9]{1,7}")


@dataclass(frozen=True)
class MeshOptions:
    """Everything that differs between the real mesh (`make up`) and a test's mesh."""

    prefix: str = "mw"
    subnet: str = "10.213.0.0/24"
    state_dir: Path = Path("/var/run/meshward")
    ingress_port: int = 8080
    control_plane_port: int = ports.CONTROL_PLANE
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    workload_ttl: str = "1h"
    app_uid: int = 1000
    ingress_uid: int = 1338
    jaeger: bool = True  # traces, if a Jaeger binary is found (`make jaeger` builds one)
    jaeger_otlp_port: int = ports.JAEGER_OTLP_HTTP
    jaeger_query_port: int = ports.JAEGER_QUERY
    jaeger_query_grpc_port: int = 16685
    # On a real API server (`up --kubernetes`): the demo as Pods, run by node runners.
    kubernetes: bool = False
    webhook_port: int = 15017  # the injection webhook, on loopback (the API server calls it)

    def __post_init__(self) -> None:
        if _PREFIX_RE.fullmatch(self.prefix) is None:
            raise ConfigError(
                f"mesh: prefix {self.prefix!r} must be 2-8 lowercase letters/digits, "
                "starting with a letter"
            )
        try:
            net = ipaddress.ip_network(self.subnet)
        except ValueError as exc:
            raise ConfigError(f"mesh: subnet {self.subnet!r} is not a network: {exc}") from exc
        if net.version != 4 or net.num_addresses < 32:
            raise ConfigError(f"mesh: subnet {self.subnet!r} must be IPv4 with room for 30 hosts")
        for port in (
            self.ingress_port,
            self.control_plane_port,
            self.jaeger_otlp_port,
            self.jaeger_query_port,
            self.jaeger_query_grpc_port,
            self.webhook_port,
        ):
            if not 0 < port < 65536:
                raise ConfigError(f"mesh: port {port} is not 1..65535")
        if self.app_uid in (0, ports.PROXY_UID) or self.ingress_uid in (0, ports.PROXY_UID):
            raise ConfigError("mesh: app and ingress uids must be neither root nor the sidecar uid")


@dataclass(frozen=True)
class PodSpec:
    name: str  # pod and registry workload name, e.g. "reviews-v1"
    service: str  # demo service it runs, e.g. "reviews"
    version: str
    service_account: str
    node: str
    ip: str
    netns: str
    namespace: str = APP_NAMESPACE

    @property
    def labels(self) -> dict[str, str]:
        return {"app": self.service, "version": self.version}

    @property
    def ports(self) -> tuple[tuple[str, int], ...]:
        return SERVICE_PORTS[self.service]


@dataclass(frozen=True)
class MeshSpec:
    options: MeshOptions
    pods: tuple[PodSpec, ...]
    bridge_ip: str
    nodes: tuple[str, ...] = NODES
    ingress_node: str = NODES[0]

    def pod(self, name: str) -> PodSpec:
        for pod in self.pods:
            if pod.name == name:
                return pod
        known = ", ".join(p.name for p in self.pods)
        raise ConfigError(f"mesh: no pod named {name!r} (pods: {known})")

    def hosts(self) -> dict[str, list[str]]:
        """Service name -> pod IPs, for every pod's /etc/netns/<pod>/hosts."""
        out: dict[str, list[str]] = {}
        for pod in self.pods:
            out.setdefault(pod.service, []).append(pod.ip)
        return out

    @property
    def productpage(self) -> PodSpec:
        return next(p for p in self.pods if p.service == "productpage")

    def ingress_id(self) -> str:
        return str(
            workload_id(self.options.trust_domain, INGRESS_NAMESPACE, INGRESS_SERVICE_ACCOUNT)
        )


# (pod name, service, version, node): spread so that every call crosses nodes at least once.
_PODS = (
    ("productpage", "productpage", "v1", "node-1"),
    ("details", "details", "v1", "node-2"),
    ("reviews-v1", "reviews", "v1", "node-1"),
    ("reviews-v2", "reviews", "v2", "node-2"),
    ("ratings", "ratings", "v1", "node-2"),
)
_FIRST_POD_HOST = 10  # pods get .10, .11, ... of the subnet; .1 is the host's bridge address


def build_spec(options: MeshOptions) -> MeshSpec:
    net = ipaddress.ip_network(options.subnet)
    hosts = list(net.hosts())
    pods = tuple(
        PodSpec(
            name=name,
            service=service,
            version=version,
            service_account=validate_name("service account", f"bookinfo-{service}"),
            node=node,
            ip=str(hosts[_FIRST_POD_HOST - 1 + i]),
            netns=f"{options.prefix}-{name}",
        )
        for i, (name, service, version, node) in enumerate(_PODS)
    )
    return MeshSpec(options=options, pods=pods, bridge_ip=str(hosts[0]))


def registry_of(spec: MeshSpec) -> Registry:
    """The registry the CA serves: one workload per pod (attested by netns + the sidecar's uid)
    and the ingress, which lives in the host's namespace under its own uid."""
    workloads = [
        Workload(
            name=pod.name,
            namespace=pod.namespace,
            service_account=pod.service_account,
            node=pod.node,
            address=pod.ip,
            service=pod.service,
            ports=tuple(port for _, port in pod.ports),
            labels=pod.labels,
            selector=Selector(netns=pod.netns, uids=(ports.PROXY_UID,)),
        )
        for pod in spec.pods
    ]
    workloads.append(
        Workload(
            name=INGRESS_NAME,
            namespace=INGRESS_NAMESPACE,
            service_account=INGRESS_SERVICE_ACCOUNT,
            node=spec.ingress_node,
            labels={"app": "meshward-ingress"},
            selector=Selector(netns=HOST_NETNS, uids=(spec.options.ingress_uid,)),
        )
    )
    return Registry(tuple(workloads), spec.options.trust_domain)


def registry_yaml(spec: MeshSpec) -> str:
    header = "# Written by `meshward up`: the local mesh's workloads (see meshward/mesh/spec.py).\n"
    return header + yaml.safe_dump(dump_registry(registry_of(spec)), sort_keys=False)
