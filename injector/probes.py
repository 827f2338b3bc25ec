"""The app's HTTP probes, through the sidecar (Istio's app_probe.go).

Once the pod's inbound traffic is captured, a kubelet probe of the app's port would arrive at the
sidecar's inbound listener without a client certificate and be refused under STRICT mTLS. Istio
therefore rewrites each `httpGet` probe to the agent's status port (15020, never captured),
`/app-health/<container>/<readyz|livez|startupz>`, and hands the original probes to the sidecar
in `ISTIO_KUBE_APP_PROBERS`; the sidecar calls the app itself and answers with its status.
We do the same. tcpSocket, exec and grpc probes are left as they are.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

from meshward_common import ports
from meshward_common.errors import InvalidRequest

PROBERS_ENV = "ISTIO_KUBE_APP_PROBERS"
REWRITE_ANNOTATION = "sidecar.istio.io/rewriteAppHTTPProbers"
_KINDS = (("readinessProbe", "readyz"), ("livenessProbe", "livez"), ("startupProbe", "startupz"))


def should_rewrite(annotations: Mapping[str, str], default: bool) -> bool:
    value = annotations.get(REWRITE_ANNOTATION)
    if value is None:
        return default
    return str(value).lower() in ("true", "y", "yes", "on", "1")


def _resolve_port(container: Mapping[str, Any], port: Any, where: str) -> int:
    """A probe's port is a number or the name of one of the container's ports."""
    if isinstance(port, int) and not isinstance(port, bool):
        return port
    if isinstance(port, str):
        if port.isdigit():
            return int(port)
        for p in container.get("ports") or []:
            if p.get("name") == port and isinstance(p.get("containerPort"), int):
                return int(p["containerPort"])
        raise InvalidRequest(f"{where}: port {port!r} is not a named port of the container")
    raise InvalidRequest(f"{where}: port {port!r} is not a port number or name")


def rewrite_probes(containers: list[dict[str, Any]]) -> dict[str, Any]:
    """Rewrite the app containers' httpGet probes in place; returns the probers for the sidecar
    (path -> the original probe, port resolved), as Istio's ISTIO_KUBE_APP_PROBERS holds them."""
    probers: dict[str, Any] = {}
    for container in containers:
        name = str(container.get("name", ""))
        for field, suffix in _KINDS:
            probe = container.get(field)
            if not isinstance(probe, dict) or not isinstance(probe.get("httpGet"), dict):
                continue
            where = f"container {name} {field}"
            original = copy.deepcopy(probe["httpGet"])
            original["port"] = _resolve_port(container, original.get("port"), where)
            original.setdefault("scheme", "HTTP")
            if str(original["scheme"]).upper() not in ("HTTP", "HTTPS"):
                raise InvalidRequest(f"{where}: scheme {original['scheme']!r} is not HTTP or HTTPS")
            path = f"/app-health/{name}/{suffix}"
            # Kubernetes' default, written out: the webhook sees the API server's defaulted Pod and
            # kube-inject the user's file, and both must hand the sidecar the same probers.
            entry: dict[str, Any] = {
                "httpGet": original,
                "timeoutSeconds": probe.get("timeoutSeconds", 1),
            }
            probers[path] = entry
            probe["httpGet"] = {"path": path, "port": ports.AGENT_STATUS, "scheme": "HTTP"}
    return probers


def probers_env(probers: Mapping[str, Any]) -> str:
    return json.dumps(probers, sort_keys=True, separators=(",", ":"))
