"""Everything a cluster needs for meshward, as `istioctl manifest generate` prints it for Istio:
the namespace, the Istio CRDs the control plane watches (security, ServiceEntry), the service
accounts, the control plane's ClusterRole (the one `ca.kube.rbac` defines, nothing more), the
injector's ConfigMap, the plug-in CA Secret (`cacerts`, Istio's layout) when given, the control
plane's Service (15012 gRPC, 443 -> 15017 webhook) and Deployment, the node agents' DaemonSet
(the socket directory as a hostPath, a projected ServiceAccount token with audience istio-ca, the
mesh's root from the `istio-ca-root-cert` ConfigMap), and the MutatingWebhookConfiguration. With
`bundleEndpoint.port` also the SPIFFE bundle endpoint's Service; the CA's config file is the
ConfigMap meshward-ca-config (`federatesWith`'s relationships, none by default; the CA applies
an edit of it live: `meshward.install.federation`).

With `injectionURL` (Istio's external control plane, `istiodRemote.injectionURL`) the control
plane runs outside the cluster: no Deployment, Service or CA Secret; the webhook calls the URL and
the agents dial `caAddress`. The caBundle and the agents' root are static, from `cacerts`: the
control plane's ClusterRole stays read-only (no patching of webhook configurations or ConfigMaps,
as istiod does at run time).
Pure: values in, objects out (in apply order).
"""

from __future__ import annotations

import base64
from typing import Any

import yaml

from ca.kube.crds import istio_crds
from ca.kube.rbac import (
    CONTROL_PLANE_NAMESPACE,
    CONTROL_PLANE_SERVICE_ACCOUNT,
    NODE_AGENT_SERVICE_ACCOUNT,
    cluster_role,
    cluster_role_binding,
)
from injector.config import SOCKET_MOUNT_PATH, SOCKET_NAME, WEBHOOK_PORT, WEBHOOK_SERVICE
from injector.selection import webhooks
from injector.webhook import INJECT_PATH
from meshward.install.federation import (
    BUNDLE_ENDPOINT_SERVICE,
    BUNDLE_PORT_NAME,
    CA_CONFIG_FILE,
    CA_CONFIG_MOUNT,
    CA_CONFIGMAP,
    ca_config_data,
)
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
# Istio's ConfigMap of the mesh's root, and where its agents mount it.
ROOT_CERT_CONFIGMAP = "istio-ca-root-cert"
ROOT_CERT_MOUNT = "/var/run/secrets/istio"
ROOT_CERT_FILE = "root-cert.pem"
# The agent's own files. Every path a node agent mounts is under /var/run/secrets, where
# Kubernetes puts what it injects (the development node runner mounts volumes only there).
AGENT_STATE_MOUNT = "/var/run/secrets/meshward/agent"


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


def _root_cert_configmap(values: InstallValues) -> dict[str, Any]:
    """The mesh's root for the node agents' bootstrap (what istiod publishes as
    istio-ca-root-cert), known at generate time from the plug-in CA files."""
    assert values.cacerts is not None
    root = (values.cacerts / ROOT_CERT_FILE).read_text()
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(ROOT_CERT_CONFIGMAP),
        "data": {ROOT_CERT_FILE: root},
    }


def _ca_config_configmap(values: InstallValues) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(CA_CONFIGMAP),
        "data": ca_config_data(values.federation),
    }


def _bundle_endpoint_service(values: InstallValues) -> dict[str, Any]:
    """The bundle endpoint on its own Service: its type (how peers outside the cluster reach
    it) is chosen without exposing the CA's gRPC port or the webhook with it."""
    port = values.federation.bundle_port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(BUNDLE_ENDPOINT_SERVICE, app=CONTROL_PLANE_APP),
        "spec": {
            "type": values.federation.service_type,
            "selector": {"app": CONTROL_PLANE_APP},
            "ports": [
                {"name": BUNDLE_PORT_NAME, "port": port, "targetPort": port, "protocol": "TCP"}
            ],
        },
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
    container_ports = [
        {"name": "grpc-ca", "containerPort": ports.CONTROL_PLANE},
        {"name": "https-webhook", "containerPort": WEBHOOK_PORT},
    ]
    if values.cacerts is not None:
        args += ["--plugin-ca-dir", CACERTS_MOUNT]
        mounts.append({"name": "cacerts", "mountPath": CACERTS_MOUNT, "readOnly": True})
        volumes.append({"name": "cacerts", "secret": {"secretName": CACERTS_SECRET}})
    federation = values.federation
    if federation.bundle_port:
        args += ["--bundle-endpoint-listen", f"0.0.0.0:{federation.bundle_port}"]
        if federation.refresh_hint:
            args += ["--bundle-endpoint-refresh-hint", federation.refresh_hint]
        container_ports.append({"name": BUNDLE_PORT_NAME, "containerPort": federation.bundle_port})
    # Always there, empty unless federatesWith is set: the CA follows the file, so a relationship
    # added later is an edit of the ConfigMap, not a change of this Deployment (no restart).
    args += ["--config", f"{CA_CONFIG_MOUNT}/{CA_CONFIG_FILE}"]
    mounts.append({"name": "ca-config", "mountPath": CA_CONFIG_MOUNT, "readOnly": True})
    volumes.append({"name": "ca-config", "configMap": {"name": CA_CONFIGMAP}})
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
                            "ports": container_ports,
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
        "--ca-address", values.ca_address,
        "--socket", f"{SOCKET_MOUNT_PATH}/{SOCKET_NAME}",
        "--state-dir", AGENT_STATE_MOUNT,
        "--token-file", f"{TOKEN_MOUNT}/{TOKEN_FILE}",
        "--trust-bundle", f"{ROOT_CERT_MOUNT}/{ROOT_CERT_FILE}",
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
                    # Attestation reads other pods' processes' cgroups and credentials; the
                    # host's network reaches a control plane inside or outside the cluster.
                    "hostPID": True,
                    "hostNetwork": True,
                    "dnsPolicy": "ClusterFirstWithHostNet",
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
                                {"name": "agent-socket", "mountPath": SOCKET_MOUNT_PATH},
                                {"name": "istio-token", "mountPath": TOKEN_MOUNT, "readOnly": True},
                                {
                                    "name": "root-cert",
                                    "mountPath": ROOT_CERT_MOUNT,
                                    "readOnly": True,
                                },
                                {"name": "state", "mountPath": AGENT_STATE_MOUNT},
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
                        {"name": "root-cert", "configMap": {"name": ROOT_CERT_CONFIGMAP}},
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
    if values.injection_url:
        client = {"url": values.injection_url}
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
        *istio_crds(),
        _service_account(CONTROL_PLANE_SERVICE_ACCOUNT),
        _service_account(NODE_AGENT_SERVICE_ACCOUNT),
        cluster_role(),
        cluster_role_binding(),
        _injector_configmap(values),
    ]
    external = bool(values.injection_url)  # the control plane runs outside the cluster
    if values.cacerts is not None:
        if not external:  # an external control plane keeps its signing key to itself
            objects.append(_cacerts_secret(values))
        objects.append(_root_cert_configmap(values))
    if not external:
        objects.append(_ca_config_configmap(values))
        objects.append(_service())
        if values.federation.bundle_port:
            objects.append(_bundle_endpoint_service(values))
        objects.append(_control_plane(values))
    objects += [_node_agent(values), _webhook_configuration(values)]
    return objects


def render(objects: list[dict[str, Any]]) -> str:
    return "".join("---\n" + yaml.safe_dump(obj, sort_keys=False) for obj in objects)
