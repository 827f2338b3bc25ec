"""The workload registry: which workload identity runs where, and how to recognise it.

One YAML file, owned by the operator (or written by `meshward up`):

    trustDomain: cluster.local          # optional, must match the CA's
    workloads:
      - name: reviews-v1                # unique per namespace
        namespace: default
        serviceAccount: bookinfo-reviews
        node: node-1                    # the node agent allowed to obtain this identity
        labels: {app: reviews, version: v1}
        address: 10.213.0.12            # pod IP
        service: reviews                # optional: the service it backs
        ports: [9080]
        selector:                       # kernel facts the node agent attests against
          netns: mw-reviews-v1          # /run/netns/<name>; "host" = the node's own namespace
          uids: [1337]                  # default: the sidecar's uid

The CA uses it to authorize node agents, node agents to attest callers, and sidecars (through the
discovery stream) to map destination addresses to expected identities.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshward_common import ports
from meshward_common.errors import ConfigError, SpiffeIdError
from meshward_common.spiffe_id import SpiffeId, validate_name, workload_id
from meshward_common.yaml_lines import LineDict, load_documents

HOST_NETNS = "host"

_TOP_KEYS = {"trustDomain", "workloads"}
_WORKLOAD_KEYS = {
    "name", "namespace", "serviceAccount", "node", "labels", "address", "service", "ports",
    "selector",
}  # fmt: skip
_SELECTOR_KEYS = {"netns", "uids"}


@dataclass(frozen=True)
class Selector:
    netns: str
    uids: tuple[int, ...] = (ports.PROXY_UID,)


@dataclass(frozen=True)
class Workload:
    name: str
    namespace: str
    service_account: str
    node: str
    address: str = ""
    service: str = ""
    ports: tuple[int, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    selector: Selector | None = None
    pod_uid: str = ""  # on Kubernetes: the Pod's uid (agents attest by the kubelet's cgroup)
    sidecar_container_id: str = ""  # on Kubernetes: its istio-proxy container's runtime id

    def spiffe_id(self, trust_domain: str) -> SpiffeId:
        return workload_id(trust_domain, self.namespace, self.service_account)


@dataclass(frozen=True)
class Registry:
    workloads: tuple[Workload, ...] = ()
    trust_domain: str = ""

    def on_node(self, node: str) -> tuple[Workload, ...]:
        return tuple(w for w in self.workloads if w.node == node)

    def node_may_hold(self, node: str, identity: SpiffeId, trust_domain: str) -> bool:
        """True if a workload with this identity is registered on this node."""
        return any(w.spiffe_id(trust_domain) == identity for w in self.on_node(node))

    def by_address(self, address: str) -> tuple[Workload, ...]:
        return tuple(w for w in self.workloads if w.address == address)

    def by_service(self, service: str, namespace: str | None = None) -> tuple[Workload, ...]:
        return tuple(
            w
            for w in self.workloads
            if w.service == service and (namespace is None or w.namespace == namespace)
        )


def parse_registry(text: str, source: str) -> Registry:
    """Parse and validate a registry file; a ConfigError names the file, line and field."""
    docs = load_documents(text, source)
    if not docs:
        return Registry()
    if len(docs) > 1:
        raise ConfigError(f"{source}: a registry is one YAML document, found {len(docs)}")
    top = docs[0]
    if not isinstance(top, LineDict):
        raise ConfigError(f"{source}:1: registry must be a mapping with a 'workloads' list")
    _unknown_keys(top, _TOP_KEYS, source, "registry")
    td = top.get("trustDomain", "")
    raw = top.get("workloads") or []
    if not isinstance(raw, list):
        raise ConfigError(f"{source}:{top.line_of('workloads')}: 'workloads' must be a list")
    workloads = [_parse_workload(item, source, top.line_of("workloads")) for item in raw]
    seen: dict[tuple[str, str], int] = {}
    for item, w in zip(raw, workloads, strict=True):
        key = (w.namespace, w.name)
        if key in seen:
            raise ConfigError(
                f"{source}:{item.line}: workload {w.namespace}/{w.name} is listed twice "
                f"(first on line {seen[key]})"
            )
        seen[key] = item.line
    return Registry(tuple(workloads), str(td))


def load_registry(path: Path) -> Registry:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read registry: {exc.strerror}") from exc
    return parse_registry(text, str(path))


def _unknown_keys(d: LineDict, allowed: set[str], source: str, what: str) -> None:
    for key in d:
        if key not in allowed:
            raise ConfigError(
                f"{source}:{d.line_of(key)}: unknown field {key!r} in {what} "
                f"(known: {', '.join(sorted(allowed))})"
            )


def _parse_workload(item: Any, source: str, line: int) -> Workload:
    if not isinstance(item, LineDict):
        raise ConfigError(f"{source}:{line}: each workload must be a mapping")
    _unknown_keys(item, _WORKLOAD_KEYS, source, "workload")

    def req(key: str) -> str:
        value = item.get(key)
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{source}:{item.line_of(key)}: workload field {key!r} is required")
        return value

    def name(key: str, kind: str) -> str:
        try:
            return validate_name(kind, req(key))
        except SpiffeIdError as exc:
            raise ConfigError(f"{source}:{item.line_of(key)}: {exc}") from exc

    address = item.get("address", "") or ""
    if address:
        try:
            ipaddress.ip_address(address)
        except ValueError as exc:
            raise ConfigError(
                f"{source}:{item.line_of('address')}: address {address!r} is not an IP address"
            ) from exc
    port_list = item.get("ports", []) or []
    if not isinstance(port_list, list) or not all(
        isinstance(p, int) and 0 < p < 65536 for p in port_list
    ):
        raise ConfigError(f"{source}:{item.line_of('ports')}: ports must be a list of 1..65535")
    labels = item.get("labels", {}) or {}
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise ConfigError(f"{source}:{item.line_of('labels')}: labels must map strings to strings")
    return Workload(
        name=name("name", "workload name"),
        namespace=name("namespace", "namespace"),
        service_account=name("serviceAccount", "service account"),
        node=name("node", "node name"),
        address=str(address),
        service=str(item.get("service", "") or ""),
        ports=tuple(port_list),
        labels=dict(labels),
        selector=_parse_selector(item.get("selector"), source, item.line_of("selector")),
    )


def _parse_selector(raw: Any, source: str, line: int) -> Selector | None:
    if raw is None:
        return None
    if not isinstance(raw, LineDict):
        raise ConfigError(f"{source}:{line}: selector must be a mapping with netns and uids")
    _unknown_keys(raw, _SELECTOR_KEYS, source, "selector")
    netns = raw.get("netns")
    if not isinstance(netns, str) or not netns:
        raise ConfigError(f"{source}:{raw.line_of('netns')}: selector.netns is required")
    uids = raw.get("uids", [ports.PROXY_UID])
    if (
        not isinstance(uids, list)
        or not uids
        or not all(isinstance(u, int) and u >= 0 for u in uids)
    ):
        raise ConfigError(f"{source}:{raw.line_of('uids')}: selector.uids must be a list of uids")
    return Selector(netns=netns, uids=tuple(uids))


def dump_registry(registry: Registry) -> dict[str, Any]:
    """The registry as plain data, in the file's schema (for writing it back out)."""
    out: dict[str, Any] = {}
    if registry.trust_domain:
        out["trustDomain"] = registry.trust_domain
    out["workloads"] = [_dump_workload(w) for w in registry.workloads]
    return out


def _dump_workload(w: Workload) -> dict[str, Any]:
    d: dict[str, Any] = {
        "name": w.name,
        "namespace": w.namespace,
        "serviceAccount": w.service_account,
        "node": w.node,
    }
    if w.labels:
        d["labels"] = dict(w.labels)
    if w.address:
        d["address"] = w.address
    if w.service:
        d["service"] = w.service
    if w.ports:
        d["ports"] = list(w.ports)
    if w.selector is not None:
        d["selector"] = {"netns": w.selector.netns, "uids": list(w.selector.uids)}
    return d


def workloads_from(items: Sequence[Workload]) -> Registry:
    return Registry(tuple(items))
