"""Istio's security CRDs (`security.istio.io` AuthorizationPolicy and PeerAuthentication).

Structural schemas of Istio's API (the field names and types of `security.istio.io/v1`, as Istio's
reference documents them), served as v1 (stored) and v1beta1 like Istio serves them, so users'
YAML applies unchanged. The schema checks shapes and enums; meaning (principal syntax, condition
keys, ports) is the policy engine's job, and an object the engine refuses is reported by the
control plane and ignored. `meshward manifest generate` ships these; the tests install them.
"""

from __future__ import annotations

from typing import Any

GROUP = "security.istio.io"
VERSIONS = ("v1", "v1beta1")  # v1 stored


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


def _crd(kind: str, plural: str, short: list[str], spec: dict[str, Any]) -> dict[str, Any]:
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
        "metadata": {"name": f"{plural}.{GROUP}", "labels": {"app": "meshward"}},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short,
                "categories": ["istio-io", "security-istio-io"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": v,
                    "served": True,
                    "storage": v == VERSIONS[0],
                    "schema": schema,
                    "subresources": {"status": {}},
                }
                for v in VERSIONS
            ],
        },
    }


def security_crds() -> list[dict[str, Any]]:
    return [
        _crd("AuthorizationPolicy", "authorizationpolicies", ["ap"], AUTHORIZATION_POLICY_SPEC),
        _crd("PeerAuthentication", "peerauthentications", ["pa"], PEER_AUTHENTICATION_SPEC),
    ]
