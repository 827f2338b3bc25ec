"""Istio `ServiceEntry` (networking.istio.io/v1): services of another mesh that our sidecars call
over mTLS — how a sidecar in mesh A learns that `ratings.b.example` lives at which addresses and
which SPIFFE IDs its endpoints must present (secure naming across trust domains).

    apiVersion: networking.istio.io/v1
    kind: ServiceEntry
    metadata: {name: ratings-b, namespace: default}
    spec:
      hosts: [ratings.b.example]
      location: MESH_INTERNAL          # mTLS with the mesh's identities
      resolution: STATIC
      ports: [{number: 9080, name: http, protocol: HTTP}]
      endpoints: [{address: 10.213.184.12}]
      subjectAltNames: [spiffe://b.example/ns/default/sa/ratings]

The subset Istio users write for a federated mesh's service: MESH_INTERNAL + STATIC endpoints +
subjectAltNames (required here: they are the identities the endpoints must present). Fields that
would change routing (`addresses` VIPs, per-endpoint ports, targetPort, workloadSelector,
exportTo, DNS resolution) are refused in one line rather than silently ignored.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from meshward_common.errors import ConfigError, SpiffeIdError
from meshward_common.spiffe_id import SpiffeId, validate_name
from meshward_common.yaml_lines import LineDict, load_documents

API_VERSIONS = ("networking.istio.io/v1", "networking.istio.io/v1beta1",
                "networking.istio.io/v1alpha3")  # fmt: skip
KIND = "ServiceEntry"
_SPEC_KEYS = {"hosts", "location", "resolution", "ports", "endpoints", "subjectAltNames"}
_REFUSED = {
    "addresses": "VIPs are not supported: the app calls the endpoints' addresses",
    "workloadSelector": "WorkloadEntry selection is not supported: list the endpoints",
    "exportTo": "exportTo is not supported: an entry is visible mesh-wide",
}
_PORT_KEYS = {"number", "name", "protocol"}
_ENDPOINT_KEYS = {"address", "labels"}


@dataclass(frozen=True)
class ServiceEntry:
    name: str
    namespace: str
    hosts: tuple[str, ...]
    ports: tuple[int, ...]
    endpoints: tuple[str, ...]  # IP addresses
    subject_alt_names: tuple[str, ...]  # SPIFFE IDs the endpoints may present
    source: str = ""  # file:line, for messages


def parse_service_entries(text: str, source: str) -> tuple[ServiceEntry, ...]:
    """Every ServiceEntry of one YAML text; ConfigError naming the file, line and field."""
    entries = []
    seen: dict[tuple[str, str], int] = {}
    for document in load_documents(text, source):
        if document.value is None:
            continue  # an empty document (a trailing ---), as the policy files allow
        doc = _mapping(document.value, source, "document")
        entry = _entry(doc, source)
        key = (entry.namespace, entry.name)
        if key in seen:
            raise ConfigError(
                f"{source}:{doc.line}: ServiceEntry {entry.namespace}/{entry.name} is defined "
                f"twice (first at line {seen[key]})"
            )
        seen[key] = doc.line
        entries.append(entry)
    return tuple(entries)


def _fail(source: str, node: Any, field: str, reason: str) -> ConfigError:
    """`field` is dotted (spec.ports.number): its line is that of its last key in `node`."""
    key = field.rpartition(".")[2]
    line = node.line_of(key) if isinstance(node, LineDict) else getattr(node, "line", 0)
    return ConfigError(f"{source}:{line}: {field}: {reason}")


def _mapping(node: Any, source: str, key: str) -> LineDict:
    if not isinstance(node, LineDict):
        raise _fail(source, node, key, "must be a mapping")
    return node


def _entry(doc: Any, source: str) -> ServiceEntry:
    doc = _mapping(doc, source, "document")
    if doc.get("apiVersion") not in API_VERSIONS or doc.get("kind") != KIND:
        raise _fail(source, doc, "kind", f"expected {API_VERSIONS[0]} {KIND}")
    meta = _mapping(doc.get("metadata"), source, "metadata")
    try:
        name = validate_name("metadata.name", str(meta.get("name", "")))
        namespace = validate_name("metadata.namespace", str(meta.get("namespace", "default")))
    except SpiffeIdError as exc:
        raise _fail(source, meta, "name", str(exc)) from exc
    spec = _mapping(doc.get("spec"), source, "spec")
    for key in spec:
        if key in _REFUSED:
            raise _fail(source, spec, f"spec.{key}", _REFUSED[key])
        if key not in _SPEC_KEYS:
            raise _fail(source, spec, f"spec.{key}",
                        f"unknown field (known: {', '.join(sorted(_SPEC_KEYS))})")  # fmt: skip
    if spec.get("location") != "MESH_INTERNAL":
        raise _fail(source, spec, "spec.location",
                    "only MESH_INTERNAL is supported (services of a federated mesh, over mTLS)")  # fmt: skip
    if spec.get("resolution") != "STATIC":
        raise _fail(source, spec, "spec.resolution", "only STATIC is supported (list endpoints)")
    hosts = _strings(spec, "hosts", source)
    sans = _strings(spec, "subjectAltNames", source)
    for san in sans:
        try:
            SpiffeId.parse(san)
        except SpiffeIdError as exc:
            raise _fail(source, spec, "spec.subjectAltNames", f"{san!r}: {exc}") from exc
    return ServiceEntry(
        name,
        namespace,
        hosts,
        _ports(spec, source),
        _endpoints(spec, source),
        sans,
        f"{source}:{doc.line}",
    )


def _strings(spec: LineDict, key: str, source: str) -> tuple[str, ...]:
    value = spec.get(key)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise _fail(source, spec, f"spec.{key}", "must be a non-empty list of strings")
    return tuple(value)


def _items(spec: LineDict, key: str, known: set[str], source: str, missing: str) -> list[LineDict]:
    """The mappings listed under spec.<key>, each holding only `known` keys."""
    value = spec.get(key)
    if not isinstance(value, list) or not value:
        raise _fail(source, spec, f"spec.{key}", missing)
    items = []
    for item in value:
        item = _mapping(item, source, f"spec.{key}")
        for name in item:
            if name not in known:
                raise _fail(source, item, f"spec.{key}.{name}",
                            f"not supported (known: {', '.join(sorted(known))})")  # fmt: skip
        items.append(item)
    return items


def _ports(spec: LineDict, source: str) -> tuple[int, ...]:
    out = []
    for port in _items(spec, "ports", _PORT_KEYS, source, "must be a non-empty list of ports"):
        number = port.get("number")
        if isinstance(number, bool) or not isinstance(number, int) or not 0 < number < 65536:
            raise _fail(source, port, "spec.ports.number", "must be a port number 1..65535")
        out.append(number)
    return tuple(out)


def _endpoints(spec: LineDict, source: str) -> tuple[str, ...]:
    out = []
    endpoints = _items(
        spec, "endpoints", _ENDPOINT_KEYS, source, "must list the service's endpoints"
    )
    for endpoint in endpoints:
        address = endpoint.get("address")
        try:
            out.append(str(ipaddress.ip_address(str(address))))
        except ValueError as exc:
            raise _fail(source, endpoint, "spec.endpoints.address",
                        f"{address!r} is not an IP address") from exc  # fmt: skip
    return tuple(out)
