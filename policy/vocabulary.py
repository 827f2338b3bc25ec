"""Istio's policy vocabulary: which fields and `when` keys exist, the request attribute each
one tests, and which values can be meant for each attribute.

Kept apart from the parser so the table reads like the reference: a field missing here is refused
as unknown rather than silently ignored.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any

from meshward_common.yaml_lines import LineDict, LineList, shown
from policy.model import IP_ATTRIBUTES, PORT_ATTRIBUTES

API_VERSIONS = frozenset({"security.istio.io/v1", "security.istio.io/v1beta1"})
KINDS = frozenset({"AuthorizationPolicy", "PeerAuthentication"})
TOP_LEVEL_KEYS = frozenset({"apiVersion", "kind", "metadata", "spec", "status"})
METADATA_KEYS = frozenset(
    {
        "name",
        "namespace",
        "labels",
        "annotations",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
    }
)

# field name -> (attribute, negate)
SOURCE_FIELDS: Mapping[str, tuple[str, bool]] = {
    "principals": ("source.principal", False),
    "notPrincipals": ("source.principal", True),
    "requestPrincipals": ("request.principal", False),
    "notRequestPrincipals": ("request.principal", True),
    "namespaces": ("source.namespace", False),
    "notNamespaces": ("source.namespace", True),
    "ipBlocks": ("source.ip", False),
    "notIpBlocks": ("source.ip", True),
    "remoteIpBlocks": ("remote.ip", False),
    "notRemoteIpBlocks": ("remote.ip", True),
}
OPERATION_FIELDS: Mapping[str, tuple[str, bool]] = {
    "hosts": ("request.host", False),
    "notHosts": ("request.host", True),
    "ports": ("destination.port", False),
    "notPorts": ("destination.port", True),
    "methods": ("request.method", False),
    "notMethods": ("request.method", True),
    "paths": ("request.path", False),
    "notPaths": ("request.path", True),
}
CONDITION_KEYS = frozenset(
    {
        "source.ip",
        "remote.ip",
        "source.namespace",
        "source.principal",
        "destination.ip",
        "destination.port",
        "connection.sni",
    }
)
HEADER_KEY_RE = re.compile(r"request\.headers\[([!#$%&'*+.^_`|~0-9A-Za-z-]+)\]")
NAME_RE = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
PEER_MODES: frozenset[str] = frozenset({"UNSET", "STRICT", "PERMISSIVE", "DISABLE"})


def value_problem(attribute: str, value: str) -> str:
    """Why `value` can never be what the user meant for `attribute`, or ""."""
    if attribute in IP_ATTRIBUTES:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            return f"{shown(value)} is not an IP address or CIDR block"
        return ""
    if attribute in PORT_ATTRIBUTES:
        return (
            ""
            if port_number(value) is not None
            else f"{shown(value)} is not a port number from 1 to 65535"
        )
    if attribute in ("source.principal", "request.principal") and value.startswith("spiffe://"):
        return f"write principals without the spiffe:// prefix: {shown(value[len('spiffe://') :])}"
    if value != "*" and "*" in value[1:-1]:
        return f"{shown(value)}: '*' is supported only alone, at the start or at the end"
    if value.startswith("*") and value.endswith("*") and value != "*":
        return f"{shown(value)}: '*' is supported only alone, at the start or at the end, not both"
    return ""


def port_number(value: Any) -> int | None:
    text = str(value)
    if not text.isdigit() or len(text) > 5:  # int() of a huge digit string is costly, or refused
        return None
    port = int(text)
    return port if 1 <= port <= 65535 else None


def kind_of(value: Any) -> str:
    if isinstance(value, LineDict | dict):
        return "a mapping"
    if isinstance(value, LineList | list):
        return "a list"
    if value is None:
        return "nothing"
    return f"{type(value).__name__} {shown(value)}"
