"""The Istio CRDs the control plane watches: `security.istio.io` AuthorizationPolicy and
PeerAuthentication, and `networking.istio.io` ServiceEntry (a federated mesh's services).

Structural schemas of Istio's API (the field names and types of `security.istio.io/v1` and
`networking.istio.io/v1`, as Istio's reference documents them), served in the versions Istio
serves (security: v1 stored, v1beta1; networking: v1 stored, v1beta1, v1alpha3), so users' YAML
applies unchanged. The schema checks shapes and enums; meaning (principal syntax, condition keys,
ports, which ServiceEntry fields are supported) is the policy engine's and
`meshward_common.service_entry`'s job, and an object they refuse is reported by the control plane
and ignored (its last good version kept). `meshward manifest generate` ships these; the tests
install them.
"""

from __future__ import annotations

from typing import Any

GROUP = "security.istio.io"
VERSIONS = ("v1", "v1beta1")  # v1 stored
NETWORKING_GROUP = "networking.istio.io"
NETWORKING_VERSIONS = ("v1", "v1beta1", "v1alpha3")  # v1 stored


def _strings() -> dict[str, Any]:
    return {"type": "array", "items": {"type": "string"}}


def _lists(*names: str) -> dict[str, Any]:
    props: dict[str, Any] = {}
    for name in names:
        props[name] = _strings()
        props["not" + name[0].upper() + name[1:]] = _strings()
    return props


_SELECTOR = {
    "type": "object",
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
_TARGET_REF = {
    "type": "object",
    "required": ["kind", "name"],
    "properties": {k: {"type": "string"} for k in ("group", "kind", "name", "namespace")},
}
_SOURCE = {
    "type": "object",
    "properties": _lists(
        "principals", "requestPrincipals", "namespaces", "serviceAccounts", "ipBlocks",
        "remoteIpBlocks",
    ),
}  # fmt: skip
_OPERATION = {"type": "object", "properties": _lists("hosts", "ports", "methods", "paths")}
_CONDITION = {
    "type": "object",
    "required": ["key"],
    "properties": {"key": {"type": "string"}, "values": _strings(), "notValues": _strings()},
}
_RULE = {
    "type": "object",
    "properties": {
        "from": {
            "type": "array",
            "items": {"type": "object", "properties": {"source": _SOURCE}},
        },
        "to": {
            "type": "array",
            "items": {"type": "object", "properties": {"operation": _OPERATION}},
        },
        "when": {"type": "array", "items": _CONDITION},
    },
}
AUTHORIZATION_POLICY_SPEC = {
    "type": "object",
    "properties": {
        "selector": _SELECTOR,
        "targetRef": _TARGET_REF,
        "targetRefs": {"type": "array", "items": _TARGET_REF},
        "action": {"type": "string", "enum": ["ALLOW", "DENY", "AUDIT", "CUSTOM"]},
        "provider": {"type": "object", "properties": {"name": {"type": "string"}}},
        "rules": {"type": "array", "items": _RULE},
    },
}
_MTLS = {
    "type": "object",
    "properties": {
        "mode": {"type": "string", "enum": ["UNSET", "DISABLE", "PERMISSIVE", "STRICT"]},
    },
}
PEER_AUTHENTICATION_SPEC = {
    "type": "object",
    "properties": {
        "selector": _SELECTOR,
        "mtls": _MTLS,
        "portLevelMtls": {"type": "object", "additionalProperties": _MTLS},
    },
}


_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_PORT = {
    "type": "object",
    "required": ["number"],
    "properties": {
        "number": {"type": "integer", "maximum": 4294967295, "minimum": 0},
        "protocol": {"type": "string"},
        "name": {"type": "string"},
        "targetPort": {"type": "integer", "maximum": 4294967295, "minimum": 0},
    },
}
_WORKLOAD_ENTRY = {
    "type": "object",
    "properties": {
        "address": {"type": "string"},
        "ports": {"type": "object", "additionalProperties": {"type": "integer"}},
        "labels": _STRING_MAP,
        "network": {"type": "string"},
        "locality": {"type": "string"},
        "weight": {"type": "integer", "maximum": 4294967295, "minimum": 0},
        "serviceAccount": {"type": "string"},
    },
}
SERVICE_ENTRY_SPEC = {
    "type": "object",
    "required": ["hosts"],
    "properties": {
        "hosts": _strings(),
        "addresses": _strings(),
        "ports": {"type": "array", "items": _PORT},
        "location": {"type": "string", "enum": ["MESH_EXTERNAL", "MESH_INTERNAL"]},
        "resolution": {
            "type": "string",
            "enum": ["NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN", "DYNAMIC_DNS"],
        },
        "endpoints": {"type": "array", "items": _WORKLOAD_ENTRY},
        "workloadSelector": {"type": "object", "properties": {"labels": _STRING_MAP}},
        "exportTo": _strings(),
        "subjectAltNames": _strings(),
    },
}


def _crd(
    kind: str,
    plural: str,
    short: list[str],
    spec: dict[str, Any],
    group: str = GROUP,
    versions: tuple[str, ...] = VERSIONS,
) -> dict[str, Any]:
    schema = {
        "openAPIV3Schema": {
            "type": "object",
            "properties": {
                "spec": spec,
                "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            },
        }
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}", "labels": {"app": "meshward"}},
        "spec": {
            "group": group,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short,
                "categories": ["istio-io", f"{group.split('.')[0]}-istio-io"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": v,
                    "served": True,
                    "storage": v == versions[0],
                    "schema": schema,
                    "subresources": {"status": {}},
                }
                for v in versions
            ],
        },
    }


def istio_crds() -> list[dict[str, Any]]:
    """Every CRD the control plane watches (what the manifests ship and the tests install)."""
    return [
        _crd("AuthorizationPolicy", "authorizationpolicies", ["ap"], AUTHORIZATION_POLICY_SPEC),
        _crd("PeerAuthentication", "peerauthentications", ["pa"], PEER_AUTHENTICATION_SPEC),
        _crd("ServiceEntry", "serviceentries", ["se"], SERVICE_ENTRY_SPEC,
             NETWORKING_GROUP, NETWORKING_VERSIONS),
    ]  # fmt: skip
