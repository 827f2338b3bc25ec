"""Where an intercepted connection is going, from a snapshot of the mesh: a pure function.

`resolve_destination(snapshot, ip, port)` maps the original destination to the service behind it,
the SPIFFE IDs the server must present (secure naming) and whether it is in the mesh at all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from meshward_common.registry import Registry
from meshward_common.spiffe_id import DEFAULT_TRUST_DOMAIN, workload_id

OutboundPolicy = Literal["ALLOW_ANY", "REGISTRY_ONLY"]


@dataclass(frozen=True)
class MeshWorkload:
    name: str
    namespace: str
    service_account: str
    spiffe_id: str
    address: str = ""
    service: str = ""
    ports: tuple[int, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RemoteService:
    """A service of a federated mesh (an Istio ServiceEntry): its endpoints' addresses and the
    SPIFFE IDs they may present."""

    host: str
    namespace: str
    ports: frozenset[int]
    endpoints: frozenset[str]
    expected_ids: frozenset[str]


@dataclass(frozen=True)
class MeshSnapshot:
    """What the sidecar knows of the mesh: workloads and policies at one version."""

    version: str = ""
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    workloads: tuple[MeshWorkload, ...] = ()
    policies: tuple[tuple[str, str], ...] = ()  # (source, yaml)
    root_namespace: str = "istio-system"
    remote_services: tuple[RemoteService, ...] = ()

    def by_address(self, address: str) -> tuple[MeshWorkload, ...]:
        return tuple(w for w in self.workloads if w.address == address)

    def find(self, name: str, namespace: str) -> MeshWorkload | None:
        for w in self.workloads:
            if w.name == name and w.namespace == namespace:
                return w
        return None

    def addresses_of(self, host: str) -> list[str]:
        """Pod addresses for a host name: `svc`, `svc.ns`, `svc.ns.svc.cluster.local`, or an IP."""
        parts = host.split(".")
        service = parts[0]
        namespace = parts[1] if len(parts) > 1 and not host[0].isdigit() else None
        found = [
            w.address
            for w in self.workloads
            if w.address and w.service == service and namespace in (None, w.namespace)
        ]
        if found:
            return found
        return [host] if _is_ip(host) else []


@dataclass(frozen=True)
class Destination:
    ip: str
    port: int
    in_mesh: bool
    expected_ids: frozenset[str]
    service: str  # "reviews.default.svc.cluster.local", or "ip:port" outside the mesh
    workload: str = ""
    namespace: str = ""

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"


def resolve_destination(snapshot: MeshSnapshot, ip: str, port: int) -> Destination:
    workloads = snapshot.by_address(ip)
    if not workloads:
        for remote in snapshot.remote_services:
            if ip in remote.endpoints and port in remote.ports:
                return Destination(
                    ip, port, True, remote.expected_ids, remote.host, "", remote.namespace
                )
        return Destination(ip, port, False, frozenset(), f"{ip}:{port}")
    first = workloads[0]
    service = (
        f"{first.service}.{first.namespace}.svc.cluster.local" if first.service else f"{ip}:{port}"
    )
    return Destination(
        ip,
        port,
        True,
        frozenset(w.spiffe_id for w in workloads),
        service,
        first.name,
        first.namespace,
    )


def snapshot_from_registry(
    registry: Registry,
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
    policies: Sequence[tuple[str, str]] = (),
    root_namespace: str = "istio-system",
) -> MeshSnapshot:
    td = registry.trust_domain or trust_domain
    return MeshSnapshot(
        version="registry",
        trust_domain=td,
        workloads=tuple(
            MeshWorkload(
                w.name,
                w.namespace,
                w.service_account,
                str(w.spiffe_id(td)),
                w.address,
                w.service,
                tuple(w.ports),
                dict(w.labels),
            )
            for w in registry.workloads
        ),
        policies=tuple(policies),
        root_namespace=root_namespace,
    )


def snapshot_from_proto(state: Any) -> MeshSnapshot:
    """From a `meshward.v1.MeshState` message."""
    td = state.trust_domain or DEFAULT_TRUST_DOMAIN
    workloads = []
    for w in state.workloads:
        sid = w.spiffe_id or str(workload_id(td, w.namespace, w.service_account))
        workloads.append(
            MeshWorkload(
                w.name,
                w.namespace,
                w.service_account,
                sid,
                w.address,
                w.service,
                tuple(int(p) for p in w.ports),
                dict(w.labels),
            )
        )
    return MeshSnapshot(
        version=state.version_info,
        trust_domain=td,
        workloads=tuple(workloads),
        policies=tuple((p.source, p.yaml) for p in state.policies),
        root_namespace=state.root_namespace or "istio-system",
        remote_services=tuple(
            RemoteService(
                e.hosts[0] if e.hosts else e.name,
                e.namespace,
                frozenset(int(p) for p in e.ports),
                frozenset(e.endpoints),
                frozenset(e.subject_alt_names),
            )
            for e in state.service_entries
        ),
    )


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
