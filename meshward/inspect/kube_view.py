"""`status` and `check` of a mesh on Kubernetes (`meshward up --kubernetes`): the Pods from the API.

The pods, their nodes, readiness and containers are what the API server reports (the node runners
write it, as kubelets do); each pod's SPIFFE ID and expiry are what its sidecar answers; the
policies are the AuthorizationPolicy/PeerAuthentication objects (`check` names those the control
plane refused, as for any control plane on Kubernetes).
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from meshward.inspect.checks import CheckResult
from meshward.inspect.secrets import format_table
from meshward.mesh import kube_spec as ks
from meshward.mesh.layout import StateLayout
from meshward.mesh.spec import APP_NAMESPACE, INGRESS_NAMESPACE

if TYPE_CHECKING:
    from meshward.inspect.gather import MeshView

AGENT_APP = "meshward-node-agent"
PROXY = "istio-proxy"


def api_pods(layout: StateLayout) -> tuple[dict[str, dict[str, Any]] | None, str]:
    """("namespace/name" -> Pod) for the demo's and istio-system's namespaces, or ({}, why)."""
    from meshward.mesh.kube_launcher import list_pods

    try:
        pods = {
            f"{ns}/{p['metadata']['name']}": p
            for ns in (APP_NAMESPACE, INGRESS_NAMESPACE)
            for p in list_pods(layout, ns)
        }
    except Exception as exc:  # the API server is away: the table says so, check fails
        return {}, f"the API server did not answer: {exc}"
    return pods, ""


def _ready(pod: dict[str, Any] | None) -> bool:
    conditions = ((pod or {}).get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _processes(pod: dict[str, Any] | None) -> str:
    """sidecar:up,app:up from the container statuses the node runner reported."""
    statuses = ((pod or {}).get("status") or {}).get("containerStatuses") or []
    sidecar = [s for s in statuses if s.get("name") == PROXY]
    apps = [s for s in statuses if s.get("name") != PROXY]

    def up(items: list[dict[str, Any]]) -> str:
        return "up" if items and all("running" in (s.get("state") or {}) for s in items) else "DOWN"

    return f"sidecar:{up(sidecar)},app:{up(apps)}"


def _agents(view: MeshView) -> dict[str, dict[str, Any]]:
    """node -> its node agent's Pod (the DaemonSet's)."""
    out = {}
    for pod in (view.kube_pods or {}).values():
        if (pod["metadata"].get("labels") or {}).get("app") == AGENT_APP:
            out[str((pod.get("spec") or {}).get("nodeName"))] = pod
    return out


def kube_status_table(view: MeshView, now: dt.datetime) -> str:
    from meshward.inspect.gather import identity_cells

    pods = view.kube_pods or {}
    rows = [("NODE", "POD", "SPIFFE ID", "CERT EXPIRES", "READY", "PROCESSES")]
    cp = view.spec.options.control_plane_port
    running = "running" if view.sup.running("control-plane") else "DOWN"
    rows.append(("-", "control-plane", f"127.0.0.1:{cp}", "-", running, "-"))
    agents = _agents(view)
    for node in view.spec.nodes:
        runner = "running" if view.sup.running(f"node-{node}") else "DOWN"
        rows.append((node, "(node runner)", "-", "-", runner, "-"))
        agent = agents.get(node)
        name = f"(node agent {agent['metadata']['name']})" if agent else "(node agent: no pod)"
        rows.append((node, name, "-", "-", str(_ready(agent)).lower(), "-"))
    for pod in sorted(view.spec.pods, key=lambda p: (p.node, p.name)):
        obj = pods.get(f"{APP_NAMESPACE}/{pod.name}")
        sid, expires = identity_cells(view, pod, now)
        node = str((obj or {}).get("spec", {}).get("nodeName") or pod.node)
        rows.append((node, pod.name, sid, expires, str(_ready(obj)).lower(), _processes(obj)))
    ingress = pods.get(f"{INGRESS_NAMESPACE}/{ks.INGRESS_POD}")
    rows.append(
        (
            view.spec.ingress_node,
            "ingress",
            view.spec.ingress_id(),
            f"127.0.0.1:{view.spec.options.ingress_port}",
            str(_ready(ingress)).lower(),
            "-",
        )
    )
    table = format_table(rows)
    return table + (f"\nKubernetes API: {view.kube_error}" if view.kube_error else "")


def kube_process_checks(view: MeshView) -> list[CheckResult]:
    results = []
    names = ["kube", "control-plane", *(f"node-{n}" for n in view.spec.nodes)]
    for name in names:
        ok = view.sup.running(name)
        fix = "" if ok else f"`meshward up` restarts it; see `meshward logs {name}`"
        results.append(CheckResult("processes", f"{name} is running", ok, "", fix))
    ok = not view.kube_error
    fix = "" if ok else "`meshward up` restarts the cluster; see `meshward logs kube`"
    results.append(CheckResult("kubernetes", "the API server answers", ok, view.kube_error, fix))
    agents = _agents(view)
    for node in view.spec.nodes:
        ok = _ready(agents.get(node))
        fix = "" if ok else f"see `meshward logs node-{node}` and the agent's log in its node dir"
        results.append(CheckResult("kubernetes", f"the node agent on {node} is Ready", ok, "", fix))
    for key in [f"{APP_NAMESPACE}/{p.name}" for p in view.spec.pods] + [
        f"{INGRESS_NAMESPACE}/{ks.INGRESS_POD}"
    ]:
        pod = (view.kube_pods or {}).get(key)
        ok = _ready(pod)
        phase = ((pod or {}).get("status") or {}).get("phase", "not in the API")
        fix = "" if ok else "see `meshward logs <pod>` (its node runner's container logs)"
        results.append(
            CheckResult("kubernetes", f"pod {key} is Ready", ok, "" if ok else phase, fix)
        )
    return results
