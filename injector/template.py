"""The injected Pod: pure, a Pod (template) in, the Pod with its sidecar out.

What is added, and nothing else (Istio's sidecar template, with our commands):
- init container `istio-init` (last of the init containers, so the others run before capture):
  `meshward sidecar init` with istio-iptables' flags from the `traffic.sidecar.istio.io/*`
  annotations; root, every capability dropped but NET_ADMIN and NET_RAW.
- container `istio-proxy` (last): `meshward sidecar run`, uid/gid 1337, read-only root file
  system, no privilege escalation, all capabilities dropped, readiness on 15021 /healthz/ready,
  Prometheus port 15090; the node agent's socket directory mounted read-only.
- volume `workload-socket`: the node agent's socket directory (hostPath).
- annotations: `sidecar.istio.io/status` (what was injected), `prometheus.io/scrape|port|path`
  for 15090 unless the Pod has its own Prometheus annotations, and
  `kubectl.kubernetes.io/default-container` (the first app container) unless set.
- the app containers' httpGet probes rewritten through the sidecar (`probes`), unless the Pod's
  `sidecar.istio.io/rewriteAppHTTPProbers: "false"` says no.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

from injector.config import SOCKET_MOUNT_PATH, SOCKET_NAME, InjectorConfig
from injector.probes import PROBERS_ENV, probers_env, rewrite_probes, should_rewrite
from injector.selection import STATUS_ANNOTATION
from meshward_common import ports
from meshward_common.capture_flags import parse_cidr_list, parse_port_list
from meshward_common.errors import ConfigError, InvalidRequest

INIT_CONTAINER = "istio-init"
PROXY_CONTAINER = "istio-proxy"
SOCKET_VOLUME = "workload-socket"
DEFAULT_CONTAINER_ANNOTATION = "kubectl.kubernetes.io/default-container"
PROMETHEUS_ANNOTATIONS = ("prometheus.io/scrape", "prometheus.io/port", "prometheus.io/path")
TRAFFIC = "traffic.sidecar.istio.io/"
INCLUDE_OUTBOUND_IP_RANGES = TRAFFIC + "includeOutboundIPRanges"
EXCLUDE_OUTBOUND_IP_RANGES = TRAFFIC + "excludeOutboundIPRanges"
INCLUDE_INBOUND_PORTS = TRAFFIC + "includeInboundPorts"
EXCLUDE_INBOUND_PORTS = TRAFFIC + "excludeInboundPorts"
EXCLUDE_OUTBOUND_PORTS = TRAFFIC + "excludeOutboundPorts"
# Never captured inbound, whatever the Pod says: the sidecar's own Prometheus, health and status.
ALWAYS_EXCLUDED_INBOUND = (ports.PROMETHEUS, ports.HEALTH, ports.AGENT_STATUS)


def _ports_text(value: tuple[int, ...] | None) -> str:
    return "*" if value is None else ",".join(map(str, value))


def _cidrs_text(value: tuple[str, ...] | None) -> str:
    return "*" if value is None else ",".join(value)


def init_args(annotations: Mapping[str, str]) -> list[str]:
    """`meshward sidecar init` flags for the Pod's traffic annotations, validated with the rules
    the init container will apply (a bad annotation fails injection here, not the Pod later)."""

    def get(key: str, default: str) -> str:
        value = annotations.get(key, default)
        if not isinstance(value, str):
            raise InvalidRequest(f"annotation {key}: {value!r} is not a string")
        return value

    def ports_of(key: str, default: str) -> tuple[int, ...] | None:
        try:
            return parse_port_list(get(key, default), key)
        except ConfigError as exc:  # the init container would refuse it: the Pod's fault
            raise InvalidRequest(f"annotation {str(exc).removeprefix('interception: ')}") from exc

    def cidrs_of(key: str, default: str) -> tuple[str, ...] | None:
        try:
            return parse_cidr_list(get(key, default), key)
        except ConfigError as exc:
            raise InvalidRequest(f"annotation {str(exc).removeprefix('interception: ')}") from exc

    def never_all(key: str, value: tuple[Any, ...] | None) -> tuple[Any, ...]:
        if value is None:
            raise InvalidRequest(f"annotation {key}: an exclusion cannot be '*'")
        return value

    include_in = ports_of(INCLUDE_INBOUND_PORTS, "*")
    exclude_in = never_all(EXCLUDE_INBOUND_PORTS, ports_of(EXCLUDE_INBOUND_PORTS, ""))
    include_out = cidrs_of(INCLUDE_OUTBOUND_IP_RANGES, "*")
    exclude_out = never_all(EXCLUDE_OUTBOUND_IP_RANGES, cidrs_of(EXCLUDE_OUTBOUND_IP_RANGES, ""))
    exclude_out_ports = never_all(EXCLUDE_OUTBOUND_PORTS, ports_of(EXCLUDE_OUTBOUND_PORTS, ""))
    excluded_in = list(ALWAYS_EXCLUDED_INBOUND) + [
        p for p in exclude_in if p not in ALWAYS_EXCLUDED_INBOUND
    ]
    args = [
        "sidecar", "init",
        "-p", str(ports.OUTBOUND),
        "-z", str(ports.INBOUND),
        "-u", str(ports.PROXY_UID),
        "-g", str(ports.PROXY_GID),
        "-m", "REDIRECT",
        "-i", _cidrs_text(include_out),
        "-x", _cidrs_text(exclude_out),
        "-b", _ports_text(include_in),
        "-d", _ports_text(tuple(excluded_in)),
    ]  # fmt: skip
    if EXCLUDE_OUTBOUND_PORTS in annotations:
        args += ["-o", _ports_text(exclude_out_ports)]
    return args


def init_container(config: InjectorConfig, annotations: Mapping[str, str]) -> dict[str, Any]:
    return {
        "name": INIT_CONTAINER,
        "image": config.image,
        "imagePullPolicy": config.image_pull_policy,
        "args": init_args(annotations),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
            "readOnlyRootFilesystem": False,
            "runAsGroup": 0,
            "runAsNonRoot": False,
            "runAsUser": 0,
        },
    }


def _field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}}


def proxy_container(
    config: InjectorConfig, labels: Mapping[str, str], probers: Mapping[str, Any]
) -> dict[str, Any]:
    args = [
        "sidecar", "run",
        "--agent-socket", f"{SOCKET_MOUNT_PATH}/{SOCKET_NAME}",
        "--pod-ip", "$(INSTANCE_IP)",
        "--workload", "$(POD_NAME)",
        "--namespace", "$(POD_NAMESPACE)",
        "--trace-sampling", f"{config.trace_sampling:g}",
    ]  # fmt: skip
    if labels.get("app"):
        args += ["--service", str(labels["app"])]
    if config.otlp_endpoint:
        args += ["--otlp-endpoint", config.otlp_endpoint]
    env = [
        _field_env("POD_NAME", "metadata.name"),
        _field_env("POD_NAMESPACE", "metadata.namespace"),
        _field_env("INSTANCE_IP", "status.podIP"),
        _field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
    ]
    if probers:
        env.append({"name": PROBERS_ENV, "value": probers_env(probers)})
    return {
        "name": PROXY_CONTAINER,
        "image": config.image,
        "imagePullPolicy": config.image_pull_policy,
        "args": args,
        "env": env,
        "ports": [
            {"containerPort": ports.PROMETHEUS, "name": "http-envoy-prom", "protocol": "TCP"}
        ],
        "readinessProbe": {
            "httpGet": {"path": "/healthz/ready", "port": ports.HEALTH, "scheme": "HTTP"},
            "initialDelaySeconds": 0,
            "periodSeconds": 2,
            "timeoutSeconds": 3,
            "failureThreshold": 30,
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "runAsGroup": ports.PROXY_GID,
            "runAsNonRoot": True,
            "runAsUser": ports.PROXY_UID,
        },
        "volumeMounts": [{"name": SOCKET_VOLUME, "mountPath": SOCKET_MOUNT_PATH, "readOnly": True}],
    }


def socket_volume(config: InjectorConfig) -> dict[str, Any]:
    return {
        "name": SOCKET_VOLUME,
        "hostPath": {"path": config.socket_host_dir, "type": "Directory"},
    }


def _check_shape(pod: Mapping[str, Any]) -> None:
    spec = pod.get("spec")
    if not isinstance(spec, dict):
        raise InvalidRequest("the pod has no spec")
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers:
        raise InvalidRequest("the pod has no containers")
    for key in ("containers", "initContainers", "volumes"):
        items = spec.get(key) or []
        if not isinstance(items, list) or not all(isinstance(c, dict) for c in items):
            raise InvalidRequest(f"spec.{key} is not a list of objects")
    names = {c.get("name") for c in containers} | {
        c.get("name") for c in spec.get("initContainers") or []
    }
    for taken in (INIT_CONTAINER, PROXY_CONTAINER):
        if taken in names:
            raise InvalidRequest(f"the pod already has a container named {taken}")
    if SOCKET_VOLUME in {v.get("name") for v in spec.get("volumes") or []}:
        raise InvalidRequest(f"the pod already has a volume named {SOCKET_VOLUME}")
    metadata = pod.get("metadata") or {}
    for key in ("labels", "annotations"):
        value = metadata.get(key) or {}
        if not isinstance(value, dict):
            raise InvalidRequest(f"metadata.{key} is not a map")


def inject_pod(pod: Mapping[str, Any], config: InjectorConfig) -> dict[str, Any]:
    """The Pod (or Pod template: metadata + spec) with the sidecar. Raises InvalidRequest when the
    Pod cannot be injected (a bad annotation, a probe port that does not exist, a name clash)."""
    _check_shape(pod)
    out = copy.deepcopy(dict(pod))
    metadata = out.setdefault("metadata", {})
    annotations: dict[str, Any] = dict(metadata.get("annotations") or {})
    labels = metadata.get("labels") or {}
    spec = out["spec"]
    app_names = [str(c.get("name", "")) for c in spec["containers"]]
    probers: dict[str, Any] = {}
    if should_rewrite(annotations, config.rewrite_app_probes):
        probers = rewrite_probes(spec["containers"])
    spec["initContainers"] = [
        *(spec.get("initContainers") or []),
        init_container(config, annotations),
    ]
    spec["containers"] = [*spec["containers"], proxy_container(config, labels, probers)]
    spec["volumes"] = [*(spec.get("volumes") or []), socket_volume(config)]
    if not any(key in annotations for key in PROMETHEUS_ANNOTATIONS):
        annotations["prometheus.io/scrape"] = "true"
        annotations["prometheus.io/port"] = str(ports.PROMETHEUS)
        annotations["prometheus.io/path"] = "/stats/prometheus"
    annotations.setdefault(DEFAULT_CONTAINER_ANNOTATION, app_names[0])
    annotations[STATUS_ANNOTATION] = json.dumps(
        {
            "initContainers": [INIT_CONTAINER],
            "containers": [PROXY_CONTAINER],
            "volumes": [SOCKET_VOLUME],
            "imagePullSecrets": None,
            "revision": config.revision,
        },
        separators=(",", ":"),
    )
    metadata["annotations"] = annotations
    return out
