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
from meshward_common.errors import SpiffeIdError
from meshward_common.spiffe_id import SpiffeId, validate_name, validate_trust_domain, workload_id
from meshward_common.yaml_lines import (
    FieldError,
    Limits,
    LineDict,
    load_documents,
    read_text,
    shown,
    shown_key,
)

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


# What a registry file may cost (meshward_common.yaml_lines). A 10,000-workload registry is about
# 2.4 MB and 220,000 values; these bounds leave room for ~60,000 workloads, and the mesh state the
# control plane serves has its own bound (meshward_common.mesh_state).
REGISTRY_LIMITS = Limits(
    max_bytes=16 << 20, max_nodes=1_500_000, max_depth=64, what="registry files"
)
_MAX_UID = 2**32 - 2  # (uid_t)-1 means "no uid"


def parse_registry(text: str, source: str) -> Registry:
    """Parse and validate a registry file; a FieldError (a ConfigError) names file, line, field."""
    docs = load_documents(text, source, REGISTRY_LIMITS)
    if not docs:
        return Registry()
    if len(docs) > 1:
        raise FieldError(source, docs[1].line, "registry", "a registry is one YAML document")
    top = docs[0].value
    if not isinstance(top, LineDict):
        raise FieldError(
            source,
            docs[0].line,
            "registry",
            f"must be a mapping with a workloads list, got {_kind(top)}",
        )
    _unknown_keys(top, _TOP_KEYS, source, "")
    td = top.get("trustDomain", "")
    if td != "":
        if not isinstance(td, str):
            raise FieldError(
                source,
                top.line_of("trustDomain"),
                "trustDomain",
                f"must be a string, got {_kind(td)}",
            )
        try:
            validate_trust_domain(td)
        except SpiffeIdError as exc:
            raise FieldError(source, top.line_of("trustDomain"), "trustDomain", str(exc)) from exc
    raw = top.get("workloads")
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise FieldError(
            source, top.line_of("workloads"), "workloads", f"must be a list, got {_kind(raw)}"
        )
    workloads = [
        _parse_workload(item, source, top.line_of("workloads"), f"workloads[{i}]")
        for i, item in enumerate(raw)
    ]
    seen: dict[tuple[str, str], int] = {}
    for i, (item, w) in enumerate(zip(raw, workloads, strict=True)):
        key = (w.namespace, w.name)
        if key in seen:
            raise FieldError(
                source,
                item.line,
                f"workloads[{i}].name",
                f"workload {w.namespace}/{w.name} is listed twice (first on line {seen[key]})",
            )
        seen[key] = item.line
    return Registry(tuple(workloads), td)


def load_registry(path: Path) -> Registry:
    return parse_registry(read_text(path, REGISTRY_LIMITS), str(path))


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return "nothing" if value is None else f"{type(value).__name__} {shown(value)}"


def _unknown_keys(d: LineDict, allowed: set[str], source: str, field: str) -> None:
    for key in d:
        if key not in allowed:
            raise FieldError(
                source,
                d.line_of(key),
                f"{field}.{shown_key(key)}" if field else shown_key(key),
                f"unknown field (known: {', '.join(sorted(allowed))})",
            )


def _parse_workload(item: Any, source: str, line: int, field: str) -> Workload:
    if not isinstance(item, LineDict):
        raise FieldError(source, line, field, f"must be a mapping, got {_kind(item)}")
    _unknown_keys(item, _WORKLOAD_KEYS, source, field)

    def problem(key: str, reason: str) -> FieldError:
        return FieldError(source, item.line_of(key), f"{field}.{key}", reason)

    def text(key: str, *, required: bool) -> str:
        value = item.get(key)
        if value is None or value == "":
            if required:
                raise problem(key, "required")
            return ""
        if not isinstance(value, str):
            raise problem(key, f"must be a string, got {_kind(value)}")
        return value

    def name(key: str, kind: str, *, required: bool = True) -> str:
        value = text(key, required=required)
        if not value:
            return ""
        try:
            return validate_name(kind, value)
        except SpiffeIdError as exc:
            raise problem(key, str(exc)) from exc

    address = text("address", required=False)
    if address:
        try:
            ipaddress.ip_address(address)
        except ValueError as exc:
            raise problem("address", f"{shown(address)} is not an IP address") from exc
    port_list = item.get("ports") or []
    if not isinstance(port_list, list) or not all(_is_int(p) and 0 < p < 65536 for p in port_list):
        raise problem("ports", "must be a list of port numbers from 1 to 65535")
    labels = item.get("labels")
    if labels is None:
        labels = LineDict()
        labels.key_lines = {}
    if not isinstance(labels, LineDict):
        raise problem("labels", f"must be a mapping, got {_kind(labels)}")
    for key, value in labels.items():
        if not isinstance(value, str):
            raise FieldError(
                source,
                labels.line_of(key),
                f"{field}.labels.{shown_key(key)}",
                f"label value must be a string (quote it), got {_kind(value)}",
            )
    return Workload(
        name=name("name", "workload name"),
        namespace=name("namespace", "namespace"),
        service_account=name("serviceAccount", "service account"),
        node=name("node", "node name"),
        address=address,
        service=name("service", "service name", required=False),
        ports=tuple(port_list),
        labels=dict(labels),
        selector=_parse_selector(item.get("selector"), source, item.line_of("selector"), field),
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # `true` is not port 1


def _parse_selector(raw: Any, source: str, line: int, parent: str) -> Selector | None:
    field = f"{parent}.selector"
    if raw is None:
        return None
    if not isinstance(raw, LineDict):
        raise FieldError(
            source, line, field, f"must be a mapping with netns and uids, got {_kind(raw)}"
        )
    _unknown_keys(raw, _SELECTOR_KEYS, source, field)
    netns = raw.get("netns")
    if not isinstance(netns, str) or not netns:
        raise FieldError(
            source, raw.line_of("netns"), f"{field}.netns", "required, a network namespace name"
        )
    if "/" in netns or netns in (".", "..") or len(netns) > 255:
        raise FieldError(
            source,
            raw.line_of("netns"),
            f"{field}.netns",
            f"{shown(netns)} is not a name under /run/netns",
        )
    uids = raw.get("uids", [ports.PROXY_UID])
    if (
        not isinstance(uids, list)
        or not uids
        or not all(_is_int(u) and 0 <= u <= _MAX_UID for u in uids)
    ):
        raise FieldError(
            source, raw.line_of("uids"), f"{field}.uids", "must be a non-empty list of uids"
        )
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
