"""Everything a cluster needs for meshward, as `istioctl manifest generate` prints it for Istio:
the namespace, Istio's security CRDs, the service accounts, the control plane's ClusterRole (the
one `ca.kube.rbac` defines, nothing more), the injector's ConfigMap, the plug-in CA Secret
(`cacerts`, Istio's layout) when given, the control plane's Service (15012 gRPC, 443 -> 15017
webhook) and Deployment, the node agents' DaemonSet (the socket directory as a hostPath, a
projected ServiceAccount token with audience istio-ca), and the MutatingWebhookConfiguration.
Pure: values in, objects out (in apply order).
"""

from __future__ import annotations

import base64
from typing import Any

import yaml

from ca.kube.crds import security_crds
from ca.kube.rbac import (
    CONTROL_PLANE_NAMESPACE,
    CONTROL_PLANE_SERVICE_ACCOUNT,
    NODE_AGENT_SERVICE_ACCOUNT,
    cluster_role,
    cluster_role_binding,
)
from injector.config import SOCKET_NAME, WEBHOOK_PORT, WEBHOOK_SERVICE
from injector.selection import webhooks
from injector.webhook import INJECT_PATH
from meshward.install.values import CACERTS_FILES, InstallValues
from meshward_common import ports

NS = CONTROL_PLANE_NAMESPACE
CONTROL_PLANE_APP = "meshward-control-plane"
NODE_AGENT_APP = "meshward-node-agent"
INJECTOR_CONFIGMAP = "meshward-sidecar-injector"
WEBHOOK_CONFIGURATION = "meshward-sidecar-injector"
CACERTS_SECRET = "cacerts"  # noqa: S105 - Istio's name for the plug-in CA Secret, not a secret
CACERTS_MOUNT = "/etc/cacerts"
INJECTOR_MOUNT = "/etc/meshward/injector"
TOKEN_MOUNT = "/var/run/secrets/tokens"  # noqa: S105 - a path
TOKEN_FILE = "istio-token"  # noqa: S105 - a file name (Istio's)


def _meta(name: str, namespace: str | None = NS, **labels: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": name,
        "labels": {"app.kubernetes.io/part-of": "meshward", **labels},
    }
    if namespace is not None:
        out["namespace"] = namespace
    return out


def _service_account(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(name)}


def _cacerts_secret(values: InstallValues) -> dict[str, Any]:
    assert values.cacerts is not None
    data = {
        name: base64.b64encode((values.cacerts / name).read_bytes()).decode()
        for name in CACERTS_FILES
    }
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": _meta(CACERTS_SECRET),
        "data": data,
    }


def _injector_configmap(values: InstallValues) -> dict[str, Any]:
    config = yaml.safe_dump(values.injector.as_dict(), sort_keys=True)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(INJECTOR_CONFIGMAP),
        "data": {"config": config},
    }


def _service() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(WEBHOOK_SERVICE, app=CONTROL_PLANE_APP),
        "spec": {
            "selector": {"app": CONTROL_PLANE_APP},
            "ports": [
                {
                    "name": "grpc-ca",
                    "port": ports.CONTROL_PLANE,
                    "targetPort": ports.CONTROL_PLANE,
                    "protocol": "TCP",
                },
                {
                    "name": "https-webhook",
                    "port": 443,
                    "targetPort": WEBHOOK_PORT,
                    "protocol": "TCP",
                },
            ],
        },
    }


_RESTRICTED = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "runAsUser": ports.PROXY_UID,
    "runAsGroup": ports.PROXY_GID,
}


def _control_plane(values: InstallValues) -> dict[str, Any]:
    args = [
        "ca", "serve", "--kubernetes",
        "--listen", f"0.0.0.0:{ports.CONTROL_PLANE}",
        "--webhook-listen", f"0.0.0.0:{WEBHOOK_PORT}",
        "--injector-config", f"{INJECTOR_MOUNT}/config",
        "--state-dir", "/var/lib/meshward/ca",
        "--trust-domain", values.trust_domain,
    ]  # fmt: skip
    mounts = [
        {"name": "injector-config", "mountPath": INJECTOR_MOUNT, "readOnly": True},
        {"name": "state", "mountPath": "/var/lib/meshward/ca"},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "injector-config", "configMap": {"name": INJECTOR_CONFIGMAP}},
        {"name": "state", "emptyDir": {}},
    ]
    if values.cacerts is not None:
        args += ["--plugin-ca-dir", CACERTS_MOUNT]
        mounts.append({"name": "cacerts", "mountPath": CACERTS_MOUNT, "readOnly": True})
        volumes.append({"name": "cacerts", "secret": {"secretName": CACERTS_SECRET}})
    labels = {"app": CONTROL_PLANE_APP, "sidecar.istio.io/inject": "false"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(CONTROL_PLANE_APP, app=CONTROL_PLANE_APP),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": CONTROL_PLANE_APP}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "serviceAccountName": CONTROL_PLANE_SERVICE_ACCOUNT,
                    "containers": [
                        {
                            "name": "control-plane",
                            "image": values.image,
                            "imagePullPolicy": values.injector.image_pull_policy,
                            "args": args,
                            "ports": [
                                {"name": "grpc-ca", "containerPort": ports.CONTROL_PLANE},
                                {"name": "https-webhook", "containerPort": WEBHOOK_PORT},
                            ],
                            "readinessProbe": {
                                "tcpSocket": {"port": ports.CONTROL_PLANE},
                                "periodSeconds": 3,
                            },
                            "securityContext": _RESTRICTED,
                            "volumeMounts": mounts,
                        }
                    ],
                    "volumes": volumes,
                },
            },
        },
    }


def _node_agent(values: InstallValues) -> dict[str, Any]:
    args = [
        "agent", "run", "--kubernetes",
        "--node", "$(NODE_NAME)",
        "--ca-address", f"{WEBHOOK_SERVICE}.{NS}.svc:{ports.CONTROL_PLANE}",
        "--socket", f"{values.socket_dir}/{SOCKET_NAME}",
        "--state-dir", "/var/lib/meshward/agent",
        "--token-file", f"{TOKEN_MOUNT}/{TOKEN_FILE}",
    ]  # fmt: skip
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": _meta(NODE_AGENT_APP, app=NODE_AGENT_APP),
        "spec": {
            "selector": {"matchLabels": {"app": NODE_AGENT_APP}},
            "template": {
                "metadata": {"labels": {"app": NODE_AGENT_APP, "sidecar.istio.io/inject": "false"}},
                "spec": {
                    "serviceAccountName": NODE_AGENT_SERVICE_ACCOUNT,
                    # Attestation reads other pods' processes' cgroups and credentials.
                    "hostPID": True,
                    "containers": [
                        {
                            "name": "node-agent",
                            "image": values.image,
                            "imagePullPolicy": values.injector.image_pull_policy,
                            "args": args,
                            "env": [
                                {
                                    "name": "NODE_NAME",
                                    "valueFrom": {
                                        "fieldRef": {
                                            "apiVersion": "v1",
                                            "fieldPath": "spec.nodeName",
                                        }
                                    },
                                }
                            ],
                            "securityContext": {
                                "runAsUser": 0,
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                            },
                            "volumeMounts": [
                                {"name": "agent-socket", "mountPath": values.socket_dir},
                                {"name": "istio-token", "mountPath": TOKEN_MOUNT, "readOnly": True},
                                {"name": "state", "mountPath": "/var/lib/meshward/agent"},
                            ],
                        }
                    ],
                    "volumes": [
                        {
                            "name": "agent-socket",
                            "hostPath": {"path": values.socket_dir, "type": "DirectoryOrCreate"},
                        },
                        {
                            "name": "istio-token",
                            "projected": {
                                "sources": [
                                    {
                                        "serviceAccountToken": {
                                            "audience": values.token_audience,
                                            "expirationSeconds": 43200,
                                            "path": TOKEN_FILE,
                                        }
                                    }
                                ]
                            },
                        },
                        {"name": "state", "emptyDir": {}},
                    ],
                },
            },
        },
    }


def _webhook_configuration(values: InstallValues) -> dict[str, Any]:
    client: dict[str, Any] = {
        "service": {"name": WEBHOOK_SERVICE, "namespace": NS, "path": INJECT_PATH, "port": 443}
    }
    if values.cacerts is not None:
        client["caBundle"] = base64.b64encode(
            (values.cacerts / "root-cert.pem").read_bytes()
        ).decode()
    hooks = []
    for hook in webhooks(values.injector.revision):
        hooks.append(
            {
                **hook,
                "clientConfig": client,
                "rules": [
                    {
                        "operations": ["CREATE"],
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "resources": ["pods"],
                    }
                ],
                "failurePolicy": values.injector.failure_policy,
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "reinvocationPolicy": "Never",
                "timeoutSeconds": 10,
            }
        )
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": _meta(
            WEBHOOK_CONFIGURATION, namespace=None, **{"istio.io/rev": values.injector.revision}
        ),
        "webhooks": hooks,
    }


def generate(values: InstallValues) -> list[dict[str, Any]]:
    """Every object, in the order they can be applied."""
    objects: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": _meta(NS, namespace=None)},
        *security_crds(),
        _service_account(CONTROL_PLANE_SERVICE_ACCOUNT),
        _service_account(NODE_AGENT_SERVICE_ACCOUNT),
        cluster_role(),
        cluster_role_binding(),
        _injector_configmap(values),
    ]
    if values.cacerts is not None:
        objects.append(_cacerts_secret(values))
    objects += [
        _service(),
        _control_plane(values),
        _node_agent(values),
        _webhook_configuration(values),
    ]
    return objects


def render(objects: list[dict[str, Any]]) -> str:
    return "".join("---\n" + yaml.safe_dump(obj, sort_keys=False) for obj in objects)
