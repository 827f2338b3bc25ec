"""What the development node runner reports to the API server: pure, facts in, objects out.

The Pod's `status` as a kubelet writes it (phase, podIP/podIPs, hostIP, qosClass, the four
conditions, container statuses) from what the runner knows about each container, and the Node it
registers (capacity, a Ready condition, its address). Times are passed in.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

State = Literal["waiting", "running", "terminated"]
RUNTIME = "meshward"  # containerID scheme: meshward://<64 hex>


@dataclass(frozen=True)
class ContainerFacts:
    name: str
    container_id: str
    image: str
    state: State
    reason: str = ""  # waiting/terminated reason (ContainerCreating, Completed, Error, ...)
    message: str = ""
    exit_code: int = 0
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    restarts: int = 0
    ready: bool = False


def _time(t: dt.datetime | None) -> str | None:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if t is not None else None


def container_status(c: ContainerFacts) -> dict[str, Any]:
    state: dict[str, Any]
    if c.state == "running":
        state = {"running": {"startedAt": _time(c.started_at)}}
    elif c.state == "terminated":
        state = {
            "terminated": {
                "exitCode": c.exit_code,
                "reason": c.reason or ("Completed" if c.exit_code == 0 else "Error"),
                "startedAt": _time(c.started_at),
                "finishedAt": _time(c.finished_at),
                "containerID": f"{RUNTIME}://{c.container_id}",
                **({"message": c.message} if c.message else {}),
            }
        }
    else:
        state = {"waiting": {"reason": c.reason or "ContainerCreating"}}
        if c.message:
            state["waiting"]["message"] = c.message
    out: dict[str, Any] = {
        "name": c.name,
        "image": c.image,
        "imageID": "",
        "ready": c.ready,
        "restartCount": c.restarts,
        "started": c.state == "running",
        "state": state,
    }
    if c.state != "waiting":
        out["containerID"] = f"{RUNTIME}://{c.container_id}"
    return out


def phase_of(
    init: Sequence[ContainerFacts], containers: Sequence[ContainerFacts], restart_policy: str
) -> str:
    """The kubelet's pod phase: Pending until every init container succeeded and every container
    started; Running while any runs (or will be restarted); Succeeded/Failed when all are done."""
    if any(c.state != "terminated" or c.exit_code != 0 for c in init):
        if restart_policy == "Never" and any(
            c.state == "terminated" and c.exit_code != 0 for c in init
        ):
            return "Failed"
        return "Pending"
    if any(c.state == "waiting" and c.restarts == 0 for c in containers):
        return "Pending"
    if all(c.state == "terminated" for c in containers) and restart_policy != "Always":
        failed = any(c.exit_code != 0 for c in containers)
        if not failed or restart_policy == "Never":
            return "Failed" if failed else "Succeeded"
    return "Running"


def _condition(kind: str, ok: bool, since: dt.datetime, reason: str = "") -> dict[str, Any]:
    out = {"type": kind, "status": "True" if ok else "False", "lastTransitionTime": _time(since)}
    if reason and not ok:
        out["reason"] = reason
    return out


def pod_status(
    *,
    init: Sequence[ContainerFacts],
    containers: Sequence[ContainerFacts],
    restart_policy: str,
    pod_ip: str,
    host_ip: str,
    qos: str,
    started: dt.datetime,
    transitions: Mapping[str, dt.datetime],
    failure: str = "",
) -> dict[str, Any]:
    """The Pod's status. `transitions` holds when each condition last changed (the caller keeps
    them so a condition's time moves only when its value does). `failure`: the runner cannot run
    this Pod at all (the reason is the message)."""
    qos_class = {"besteffort": "BestEffort", "burstable": "Burstable"}.get(qos, "Guaranteed")
    if failure:
        return {
            "phase": "Failed",
            "reason": "Unsupported",
            "message": failure,
            "hostIP": host_ip,
            "startTime": _time(started),
            "qosClass": qos_class,
        }
    initialized = all(c.state == "terminated" and c.exit_code == 0 for c in init)
    ready = initialized and all(c.ready for c in containers)

    def when(kind: str) -> dt.datetime:
        return transitions.get(kind, started)

    status: dict[str, Any] = {
        "phase": phase_of(init, containers, restart_policy),
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "startTime": _time(started),
        "qosClass": qos_class,
        "conditions": [
            _condition("PodScheduled", True, when("PodScheduled")),
            _condition("Initialized", initialized, when("Initialized"), "ContainersNotInitialized"),
            _condition("ContainersReady", ready, when("ContainersReady"), "ContainersNotReady"),
            _condition("Ready", ready, when("Ready"), "ContainersNotReady"),
        ],
        "initContainerStatuses": [container_status(c) for c in init],
        "containerStatuses": [container_status(c) for c in containers],
    }
    if pod_ip:
        status["podIP"] = pod_ip
        status["podIPs"] = [{"ip": pod_ip}]
    return status


def condition_values(status: Mapping[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in status.get("conditions") or []}


def node_object(name: str, labels: Mapping[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                **labels,
            },
        },
    }


def node_status(
    address: str, now: dt.datetime, since: dt.datetime, cpus: int, memory_kib: int, version: str
) -> dict[str, Any]:
    resources = {"cpu": str(cpus), "memory": f"{memory_kib}Ki", "pods": "110"}
    return {
        "capacity": resources,
        "allocatable": resources,
        "addresses": [{"type": "InternalIP", "address": address}],
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "MeshwardNodeRunnerReady",
                "message": "meshward's development node runner (a test tool, not a kubelet)",
                "lastHeartbeatTime": _time(now),
                "lastTransitionTime": _time(since),
            }
        ],
        "nodeInfo": {
            "kubeletVersion": version,
            "kubeProxyVersion": "",
            "containerRuntimeVersion": f"{RUNTIME}://dev",
            "operatingSystem": "linux",
            "architecture": "amd64",
            "osImage": "",
            "kernelVersion": "",
            "machineID": "",
            "systemUUID": "",
            "bootID": "",
        },
    }
