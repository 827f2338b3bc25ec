"""What the control plane may do in the cluster: the one ClusterRole the manifests ship.

Only what it reads (list/watch of pods, services, endpointslices, Istio's security CRDs and
ServiceEntries) and TokenReview (create) to authenticate node agents. `meshward manifest generate`
ships exactly this, and a test runs the control plane bound to exactly this and nothing more.
"""

from __future__ import annotations

from typing import Any

CONTROL_PLANE_NAMESPACE = "istio-system"
CONTROL_PLANE_SERVICE_ACCOUNT = "meshward-control-plane"
NODE_AGENT_SERVICE_ACCOUNT = "meshward-node-agent"
CLUSTER_ROLE_NAME = "meshward-control-plane"
TOKEN_AUDIENCE = "istio-ca"  # noqa: S105 (an audience, not a secret); Istio's audience for the tokens its agents present to istiod's CA

_READ = ["list", "watch"]

RULES: tuple[dict[str, Any], ...] = (
    {"apiGroups": [""], "resources": ["pods", "services"], "verbs": _READ},
    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": _READ},
    {
        "apiGroups": ["security.istio.io"],
        "resources": ["authorizationpolicies", "peerauthentications"],
        "verbs": _READ,
    },
    {"apiGroups": ["networking.istio.io"], "resources": ["serviceentries"], "verbs": _READ},
    {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
)


def cluster_role(name: str = CLUSTER_ROLE_NAME) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name, "labels": {"app": "meshward-control-plane"}},
        "rules": [dict(rule, verbs=list(rule["verbs"])) for rule in RULES],
    }


def cluster_role_binding(
    namespace: str = CONTROL_PLANE_NAMESPACE,
    service_account: str = CONTROL_PLANE_SERVICE_ACCOUNT,
    name: str = CLUSTER_ROLE_NAME,
) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name, "labels": {"app": "meshward-control-plane"}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": service_account, "namespace": namespace}],
    }
