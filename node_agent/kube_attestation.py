"""On Kubernetes: which Pod a caller runs in, from the cgroup the kubelet put it in.

As SPIRE's k8s workload attestor does: the caller's pid (SO_PEERCRED) -> /proc/<pid>/cgroup (cgroup
v2: one line `0::<path>`; v1: the same path per hierarchy) -> the pod UID the kubelet wrote into the path -> the Pod in the mesh
state (the control plane's watch of the API) -> its service account's identity. The kubelet names
a pod's cgroup with either driver:

    cgroupfs: /kubepods/burstable/pod<uid>/<container id>
    systemd:  /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid, _ for ->.slice/
              cri-containerd-<container id>.scope   (crio-…, docker-… for other runtimes)

Only the sidecar gets the pod's identity: a process in the container the Pod's status names
`istio-proxy` (its containerID, which the kubelet names the container's cgroup after), running as
uid 1337. The app's containers share the pod's cgroup parent but not that container; a process in
the sidecar's container as another uid is refused too. Until the status reports the sidecar's
containerID (it is being created), nothing is issued: the sidecar retries. Pure functions; the
caller reads /proc.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from meshward_common import ports, registry
from meshward_common.errors import PermissionDenied

_UID = r"[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}"
_POD_SEGMENT = re.compile(rf"^(?:kubepods(?:-[a-z]+)*-)?pod({_UID})(?:\.slice)?$")
_CONTAINER_SEGMENT = re.compile(r"^(?:(?:cri-containerd|crio|docker)-)?([0-9a-f]{64})(?:\.scope)?$")


@dataclass(frozen=True)
class PodCgroup:
    pod_uid: str  # with dashes, as metadata.uid
    container_id: str  # "" when the process sits in the pod's cgroup itself


def pod_of_cgroup(text: str) -> PodCgroup | None:
    """The pod a /proc/<pid>/cgroup names, or None if it is in no kubelet pod cgroup.

    cgroup v2 has one line `0::<path>`; on a v1 or hybrid host the kubelet names the same path in
    every hierarchy, so the first line with a kubelet path decides."""
    for line in text.splitlines():
        found = _pod_of_path(line.split(":", 2)[-1].strip())
        if found is not None:
            return found
    return None


def _pod_of_path(path: str) -> PodCgroup | None:
    segments = [s for s in path.split("/") if s]
    if not segments or not segments[0].startswith("kubepods"):
        return None
    for i, seg in enumerate(segments):
        pod = _POD_SEGMENT.match(seg)
        if pod is None:
            continue
        rest = segments[i + 1 :]
        container = ""
        if rest:
            found = _CONTAINER_SEGMENT.match(rest[0])
            if found is None or len(rest) > 1:
                return None  # something else nested in the pod's cgroup: not the kubelet's layout
            container = found.group(1)
        return PodCgroup(pod.group(1).replace("_", "-"), container)
    return None


def match_pod(
    pid: int, uid: int, cgroup: PodCgroup, workloads: Iterable[registry.Workload]
) -> registry.Workload:
    """The workload of the caller's Pod on this node, for its sidecar container and uid only."""
    found = [w for w in workloads if w.pod_uid and w.pod_uid == cgroup.pod_uid]
    if not found:
        raise PermissionDenied(
            f"caller pid {pid} is in pod {cgroup.pod_uid}, which is not a running Pod on this node"
        )
    w = found[0]
    pod = f"{w.namespace}/{w.name}"
    if not cgroup.container_id:
        raise PermissionDenied(f"caller pid {pid} is in pod {pod}'s cgroup but in no container")
    if not w.sidecar_container_id:
        raise PermissionDenied(
            f"caller pid {pid}: pod {pod} has no {ports.PROXY_CONTAINER} container in its status "
            "(yet): nothing to match the caller's container against"
        )
    if cgroup.container_id != w.sidecar_container_id:
        raise PermissionDenied(
            f"caller pid {pid} is in container {cgroup.container_id[:12]} of pod {pod}, not its "
            f"{ports.PROXY_CONTAINER} container ({w.sidecar_container_id[:12]}): only the sidecar "
            "gets the pod's identity"
        )
    if uid != ports.PROXY_UID:
        raise PermissionDenied(
            f"caller pid {pid} of pod {w.namespace}/{w.name} runs as uid {uid}: only the sidecar "
            f"(istio-proxy, uid {ports.PROXY_UID}) gets the pod's identity"
        )
    return w
