"""Which Pods get a sidecar: Istio's rules, in two halves, as Istio splits them.

1. The API server calls the webhook only for Pods that one of the MutatingWebhookConfiguration's
   four entries selects (`WEBHOOKS`: namespace `istio-injection=enabled`, namespace
   `istio.io/rev=<rev>`, and the Pod-label forms of both for namespaces without a label). These
   selectors are the only copy: `meshward manifest generate` writes them, and `webhook_selects`
   evaluates them the way the API server does (for tests and `meshward check`).
2. The webhook (and `kube-inject`) then apply Istio's `injectRequired` with policy `enabled`:
   host-network Pods and the Kubernetes system namespaces never; a Pod already carrying
   `sidecar.istio.io/status` is left alone (Istio re-injects it; the API server never sends us
   one twice, and `kube-inject` on its own output must change nothing); `sidecar.istio.io/inject`
   (label, or the older annotation; the label wins) says yes or no, else yes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

INJECT_LABEL = "sidecar.istio.io/inject"
STATUS_ANNOTATION = "sidecar.istio.io/status"
NAMESPACE_LABEL = "istio-injection"
REVISION_LABEL = "istio.io/rev"
IGNORED_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease", "local-path-storage")
_YES = ("y", "yes", "true", "on")


@dataclass(frozen=True)
class Decision:
    inject: bool
    reason: str


def webhooks(revision: str) -> list[dict[str, Any]]:
    """The selectors of the four webhook entries (Istio's, for one revision), without clientConfig."""

    def expr(key: str, op: str, *values: str) -> dict[str, Any]:
        out: dict[str, Any] = {"key": key, "operator": op}
        if values:
            out["values"] = list(values)
        return out

    not_disabled = expr(INJECT_LABEL, "NotIn", "false")
    return [
        {
            "name": "rev.namespace.sidecar-injector.istio.io",
            "namespaceSelector": {
                "matchExpressions": [
                    expr(REVISION_LABEL, "In", revision),
                    expr(NAMESPACE_LABEL, "DoesNotExist"),
                ]
            },
            "objectSelector": {"matchExpressions": [not_disabled]},
        },
        {
            "name": "rev.object.sidecar-injector.istio.io",
            "namespaceSelector": {
                "matchExpressions": [
                    expr(REVISION_LABEL, "DoesNotExist"),
                    expr(NAMESPACE_LABEL, "DoesNotExist"),
                ]
            },
            "objectSelector": {
                "matchExpressions": [not_disabled, expr(REVISION_LABEL, "In", revision)]
            },
        },
        {
            "name": "namespace.sidecar-injector.istio.io",
            "namespaceSelector": {"matchExpressions": [expr(NAMESPACE_LABEL, "In", "enabled")]},
            "objectSelector": {"matchExpressions": [not_disabled]},
        },
        {
            "name": "object.sidecar-injector.istio.io",
            "namespaceSelector": {
                "matchExpressions": [
                    expr(NAMESPACE_LABEL, "DoesNotExist"),
                    expr(REVISION_LABEL, "DoesNotExist"),
                ]
            },
            "objectSelector": {
                "matchExpressions": [
                    expr(INJECT_LABEL, "In", "true"),
                    expr(REVISION_LABEL, "DoesNotExist"),
                ]
            },
        },
    ]


def label_selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """metav1.LabelSelector semantics: matchLabels and every matchExpression must hold."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values") or []
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


def webhook_selects(
    revision: str, namespace_labels: Mapping[str, str], pod_labels: Mapping[str, str]
) -> list[str]:
    """The names of the webhook entries the API server would call for this Pod."""
    return [
        hook["name"]
        for hook in webhooks(revision)
        if label_selector_matches(hook["namespaceSelector"], namespace_labels)
        and label_selector_matches(hook["objectSelector"], pod_labels)
    ]


def injection_required(
    metadata: Mapping[str, Any], spec: Mapping[str, Any], namespace: str
) -> Decision:
    """Istio's injectRequired with policy `enabled`, plus "already injected": a pure function of
    the Pod (template) metadata and spec."""
    if spec.get("hostNetwork"):
        return Decision(False, "the pod uses the host's network (hostNetwork: true)")
    if namespace in IGNORED_NAMESPACES:
        return Decision(False, f"namespace {namespace} is a Kubernetes system namespace")
    annotations = metadata.get("annotations") or {}
    if STATUS_ANNOTATION in annotations:
        return Decision(False, f"already injected ({STATUS_ANNOTATION} is set)")
    labels = metadata.get("labels") or {}
    choice = labels.get(INJECT_LABEL, annotations.get(INJECT_LABEL, ""))
    if not isinstance(choice, str) or choice == "":
        return Decision(True, "injection enabled (no sidecar.istio.io/inject)")
    if choice.lower() in _YES:
        return Decision(True, f"{INJECT_LABEL}={choice}")
    return Decision(False, f"{INJECT_LABEL}={choice}")
