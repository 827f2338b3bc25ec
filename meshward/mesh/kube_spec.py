"""The local mesh on Kubernetes (`meshward up --kubernetes`, `make up MESH=kubernetes`): what runs.

Pure: the same `MeshSpec` (pods, nodes, service accounts) in, the API objects and command lines
out. A real API server, etcd, kube-controller-manager and kube-scheduler (`meshward kube cluster
run`), `meshward manifest generate` applied as an external control plane (the CA runs on the host
with `--kubernetes` and serves the injection webhook; the node agents are the DaemonSet's pods),
the demo namespace labelled `istio-injection=enabled`, the demo's Pods bound to their nodes (the
same names as the file-based mesh: the walkthrough's commands are unchanged), the ingress as a
hostNetwork Pod in istio-system, and one development node runner per node running it all.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from meshward.mesh.components import JaegerPorts, meshward_cli, otlp_endpoint
from meshward.mesh.layout import StateLayout
from meshward.mesh.spec import (
    APP_NAMESPACE,
    APP_PORT,
    INGRESS_NAMESPACE,
    INGRESS_SERVICE_ACCOUNT,
    SERVICE_PORTS,
    MeshSpec,
)
from meshward_common import ports
from meshward_common.errors import ConfigError

IMAGE = "meshward/meshward:dev"  # no images here: the node runners run the commands themselves
INGRESS_POD = "meshward-ingress"
CLUSTER_NAME = "cluster1"  # the plug-in CA's intermediate (certs made by `ca dev-certs`)
SOCKET_HOST_DIR = "/var/run/meshward/agent"  # on each node (the node runner keeps it per node)
SOCKET = "/var/run/secrets/workload-spiffe-uds/socket"


def kubeconfig(layout: StateLayout) -> str:
    return str(layout.root / "kube" / "admin.kubeconfig")


def cacerts_dir(layout: StateLayout) -> str:
    return str(layout.root / "cacerts" / CLUSTER_NAME)


def injector_config_file(layout: StateLayout) -> str:
    return str(layout.root / "injector.yaml")


def node_root(layout: StateLayout, node: str) -> str:
    return str(layout.root / "nodes" / node)


def pod_cidr(spec: MeshSpec, node: str) -> str:
    """Each node hands out one quarter of the subnet (the first quarter holds the bridge)."""
    net = ipaddress.IPv4Network(spec.options.subnet)
    quarters = list(net.subnets(new_prefix=net.prefixlen + 2))
    index = spec.nodes.index(node) + 1
    if index >= len(quarters):
        raise ConfigError(f"mesh: subnet {net} has no quarter left for {node}")
    return str(quarters[index])


def install_sets(spec: MeshSpec, layout: StateLayout, jaeger: JaegerPorts | None) -> list[str]:
    """`meshward manifest generate --set ...` for this mesh: the plug-in CA, the control plane
    outside the cluster (the API server calls its webhook on loopback), Istio's demo profile's
    100 % tracing to the host's Jaeger."""
    o = spec.options
    sets = [
        f"image={IMAGE}",
        f"trustDomain={o.trust_domain}",
        f"cacerts={cacerts_dir(layout)}",
        f"socketDir={SOCKET_HOST_DIR}",
        f"caAddress=127.0.0.1:{o.control_plane_port}",
        f"injectionURL=https://localhost:{o.webhook_port}/inject",
        "injector.image_pull_policy=Never",
        "injector.trace_sampling=100",
    ]
    if jaeger is not None:
        sets.append(f"injector.otlp_endpoint={otlp_endpoint(spec, jaeger)}")
    return sets


def cluster_argv(layout: StateLayout) -> list[str]:
    return meshward_cli("kube", "cluster", "run", "--root", str(layout.root / "kube"))


def control_plane_argv(spec: MeshSpec, layout: StateLayout) -> list[str]:
    o = spec.options
    return meshward_cli(
        "ca", "serve", "--kubernetes",
        "--kubeconfig", kubeconfig(layout),
        "--state-dir", str(layout.ca_dir),
        "--plugin-ca-dir", cacerts_dir(layout),
        "--listen", f"127.0.0.1:{o.control_plane_port}",
        "--webhook-listen", f"127.0.0.1:{o.webhook_port}",
        "--injector-config", injector_config_file(layout),
        "--trust-domain", o.trust_domain,
        "--workload-ttl", o.workload_ttl,
    )  # fmt: skip


def node_runner_argv(spec: MeshSpec, layout: StateLayout, node: str) -> list[str]:
    return meshward_cli(
        "node", "run", "--kubernetes",
        "--node", node,
        "--kubeconfig", kubeconfig(layout),
        "--root", node_root(layout, node),
        "--prefix", spec.options.prefix,
        "--subnet", spec.options.subnet,
        "--pod-cidr", pod_cidr(spec, node),
    )  # fmt: skip


def _meta(name: str, namespace: str, **labels: str) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": labels}


def demo_objects(spec: MeshSpec) -> list[dict[str, Any]]:
    """The demo namespace labelled for injection, its service accounts, Services and Pods."""
    ns = APP_NAMESPACE
    objects: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": ns, "labels": {"istio-injection": "enabled"}},
        }
    ]
    for account in sorted({p.service_account for p in spec.pods}):
        objects.append(
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(account, ns)}
        )
    for service in sorted({p.service for p in spec.pods}):
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": _meta(service, ns, app=service),
                "spec": {
                    "selector": {"app": service},
                    "ports": [
                        {"name": name, "port": port, "targetPort": port}
                        for name, port in SERVICE_PORTS[service]
                    ],
                },
            }
        )
    for pod in spec.pods:
        app = {
            "name": pod.service,
            "image": IMAGE,
            "imagePullPolicy": "Never",
            "command": ["python", "-m", "meshward.demo"],
            "args": [
                pod.service,
                "--version",
                pod.version,
                "--port",
                str(APP_PORT),
                "--pod",
                "$(POD_NAME)",
            ],
            "env": [
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
            ],
            "ports": [{"name": name, "containerPort": port} for name, port in pod.ports],
            "readinessProbe": {
                "httpGet": {"path": "/healthz", "port": APP_PORT},
                "periodSeconds": 2,
            },
            "securityContext": {
                "runAsUser": spec.options.app_uid,
                "runAsGroup": spec.options.app_uid,
            },
        }
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": _meta(pod.name, ns, **pod.labels),
                "spec": {
                    "nodeName": pod.node,  # spread as the file-based mesh: every call crosses nodes
                    "serviceAccountName": pod.service_account,
                    "automountServiceAccountToken": False,
                    "containers": [app],
                },
            }
        )
    return objects


def ingress_objects(spec: MeshSpec, jaeger: JaegerPorts | None) -> list[dict[str, Any]]:
    """The ingress gateway: a hostNetwork Pod (it listens on the host's loopback) of its own
    service account, its container `istio-proxy` running as the proxy uid (as Istio's gateways:
    the node agent gives a Pod's identity to that container and uid only), the node agent's
    socket mounted as the sidecars have it."""
    o = spec.options
    args = [
        "sidecar", "ingress",
        "--listen", f"127.0.0.1:{o.ingress_port}",
        "--agent-socket", SOCKET,
        "--route", f"productpage.{APP_NAMESPACE}.svc.cluster.local:{APP_PORT}",
        "--trace-sampling", "100",
    ]  # fmt: skip
    if jaeger is not None:
        args += ["--otlp-endpoint", otlp_endpoint(spec, jaeger)]
    proxy = {"runAsUser": ports.PROXY_UID, "runAsGroup": ports.PROXY_GID, "runAsNonRoot": True}
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": _meta(INGRESS_SERVICE_ACCOUNT, INGRESS_NAMESPACE),
        },
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": _meta(
                INGRESS_POD,
                INGRESS_NAMESPACE,
                app="meshward-ingress",
                **{"sidecar.istio.io/inject": "false"},
            ),
            "spec": {
                "nodeName": spec.ingress_node,
                "hostNetwork": True,
                "serviceAccountName": INGRESS_SERVICE_ACCOUNT,
                "automountServiceAccountToken": False,
                "containers": [
                    {
                        "name": ports.PROXY_CONTAINER,  # Istio's gateways' name; the agent
                        "image": IMAGE,  # gives a Pod's identity to that container only
                        "imagePullPolicy": "Never",
                        "args": args,
                        "securityContext": {**proxy, "allowPrivilegeEscalation": False},
                        "readinessProbe": {
                            "tcpSocket": {"host": "127.0.0.1", "port": o.ingress_port},
                            "periodSeconds": 2,
                        },
                        "volumeMounts": [
                            {
                                "name": "workload-socket",
                                "mountPath": SOCKET.rsplit("/", 1)[0],
                                "readOnly": True,
                            }
                        ],
                    }
                ],
                "volumes": [
                    {
                        "name": "workload-socket",
                        "hostPath": {"path": SOCKET_HOST_DIR, "type": "Directory"},
                    }
                ],
            },
        },
    ]
