"""What the development node runner does for one Pod: pure, the Pod object in, a plan out.

The runner (`meshward node run --kubernetes --node N`) stands in for the kubelet and container
runtime on machines that have neither. It is a test and development tool, not a kubelet: there are
no images, so it runs only meshward's own commands (`meshward ...`, the image's entrypoint when a
container gives no command) and the demo apps (`python -m meshward.demo ...`); anything else is
refused with that reason in the Pod's status. This module decides, for one Pod:

- each process: argv (Kubernetes' `$(VAR)` expansion of command and args), environment (values
  and the downward API's fieldRefs), uid/gid (the container's securityContext, else the Pod's,
  else root);
- the cgroup the kubelet would give each container (cgroupfs driver, cgroup v2):
  `kubepods/<qos>/pod<uid>/<container id>`, the QoS class from the resources as the kubelet
  computes it, so node agents attest these processes as they would a real kubelet's;
- init containers first, in order; then the containers;
- volumes: where each one's files live on the node (hostPath under the node's own root, so two
  development nodes on one host never share one; emptyDir, configMap and projected volumes in
  the pod's directory, filled by the runner) and where each container sees them. A container's
  mounts must lie under /var/run/secrets, where Kubernetes puts what it injects: the runner gives
  each container a private mount namespace with a fresh tmpfs there (there is no image root
  file system to mount into anywhere else).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from meshward_common.errors import MeshwardError


class Unsupported(MeshwardError):
    """The runner cannot run this Pod; the message is the reason written into its status."""


_VAR_RE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
_FIELD_LABEL_RE = re.compile(r"^metadata\.(labels|annotations)\['([^']+)'\]$")


SECRETS_ROOT = "/var/run/secrets"
VOLUME_KINDS = ("hostPath", "emptyDir", "configMap", "projected")


@dataclass(frozen=True)
class Mount:
    source: str  # on the node
    target: str  # in the container, under SECRETS_ROOT
    read_only: bool


@dataclass(frozen=True)
class VolumePlan:
    name: str
    kind: str  # one of VOLUME_KINDS
    path: str  # where its files are on the node
    spec: Mapping[str, Any]  # the volume's source as the Pod gives it (what the runner fills)


@dataclass(frozen=True)
class ProcessPlan:
    container: str
    container_id: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    uid: int
    gid: int
    cgroup: str
    init: bool = False
    mounts: tuple[Mount, ...] = ()


@dataclass(frozen=True)
class PodPlan:
    uid: str
    namespace: str
    name: str
    qos: str
    cgroup: str
    init_containers: tuple[ProcessPlan, ...] = ()
    containers: tuple[ProcessPlan, ...] = ()
    readiness: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    host_network: bool = False
    volumes: tuple[VolumePlan, ...] = ()
    restart_policy: str = "Always"


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: defined variables are replaced, `$$` is a literal `$`,
    an undefined `$(VAR)` stays as it is."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)

    return _VAR_RE.sub(one, text)


def field_value(pod: Mapping[str, Any], path: str, pod_ip: str, host_ip: str) -> str:
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.podIP": pod_ip,
        "status.hostIP": host_ip,
    }
    if path in simple:
        return str(simple[path])
    m = _FIELD_LABEL_RE.match(path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    raise Unsupported(f"fieldRef {path!r} is not supported by the node runner")


def qos_class(containers: list[Mapping[str, Any]]) -> str:
    """The kubelet's QoS class: Guaranteed when every container's cpu and memory limits equal
    its requests, BestEffort when none has any, Burstable otherwise."""
    resources = [c.get("resources") or {} for c in containers]
    if not any(r.get("requests") or r.get("limits") for r in resources):
        return "besteffort"
    for r in resources:
        limits = r.get("limits") or {}
        requests = r.get("requests") or limits  # requests default to the limits
        for kind in ("cpu", "memory"):
            if kind not in limits or str(requests.get(kind)) != str(limits[kind]):
                return "burstable"
    return "guaranteed"


def container_id(pod_uid: str, name: str, init: bool) -> str:
    """A stable 64-hex id per container, as a runtime's ids look."""
    return hashlib.sha256(f"{pod_uid}/{'init' if init else 'app'}/{name}".encode()).hexdigest()


def resolve_argv(container: Mapping[str, Any], python: str) -> list[str]:
    command = list(container.get("command") or ["meshward"])  # the meshward image's entrypoint
    args = list(container.get("args") or [])
    argv = command + args
    head = argv[0]
    if head == "meshward":
        return [python, "-m", "meshward", *argv[1:]]
    if head in ("python", "python3") and argv[1:3] in (["-m", "meshward"], ["-m", "meshward.demo"]):
        return [python, *argv[1:]]
    raise Unsupported(
        f"container {container.get('name')}: the node runner runs only meshward's own commands "
        f"and the demo apps, not {head!r}"
    )


def _ids(container: Mapping[str, Any], pod_spec: Mapping[str, Any]) -> tuple[int, int]:
    own = container.get("securityContext") or {}
    pod = pod_spec.get("securityContext") or {}
    uid = own.get("runAsUser", pod.get("runAsUser", 0))
    gid = own.get("runAsGroup", pod.get("runAsGroup", uid))
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (uid, gid)):
        raise Unsupported(
            f"container {container.get('name')}: runAsUser/runAsGroup must be numbers"
        )
    return int(uid), int(gid)


def _env(
    container: Mapping[str, Any], pod: Mapping[str, Any], pod_ip: str, host_ip: str
) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in container.get("env") or []:
        name = str(item.get("name", ""))
        if "value" in item:
            env[name] = expand(str(item["value"]), env)
            continue
        ref = (item.get("valueFrom") or {}).get("fieldRef")
        if ref is None:
            if "valueFrom" in item:
                raise Unsupported(f"env {name}: only value and fieldRef are supported")
            env[name] = ""
            continue
        env[name] = field_value(pod, str(ref.get("fieldPath", "")), pod_ip, host_ip)
    return env


def _host_path(node_root: str, path: str) -> str:
    parts = [p for p in str(path).split("/") if p]
    if not str(path).startswith("/") or ".." in parts:
        raise Unsupported(f"hostPath {path!r} is not an absolute path without '..'")
    return "/".join([node_root.rstrip("/"), "host", *parts])


def plan_volumes(spec: Mapping[str, Any], node_root: str, pod_dir: str) -> tuple[VolumePlan, ...]:
    out = []
    for volume in spec.get("volumes") or []:
        name = str(volume.get("name", ""))
        kinds = [k for k in volume if k != "name"]
        kind = kinds[0] if len(kinds) == 1 else ""
        if kind not in VOLUME_KINDS:
            raise Unsupported(
                f"volume {name}: the node runner mounts only {', '.join(VOLUME_KINDS)} volumes, "
                f"not {', '.join(kinds) or 'nothing'}"
            )
        source = volume[kind] or {}
        if kind == "hostPath":
            path = _host_path(node_root, str(source.get("path", "")))
        else:
            path = f"{pod_dir}/volumes/{name}"
        out.append(VolumePlan(name, kind, path, source))
    return tuple(out)


def _mounts(container: Mapping[str, Any], volumes: Mapping[str, VolumePlan]) -> tuple[Mount, ...]:
    out = []
    for m in container.get("volumeMounts") or []:
        name, target = str(m.get("name", "")), str(m.get("mountPath", ""))
        where = f"container {container.get('name')}: volumeMount {name}"
        if name not in volumes:
            raise Unsupported(f"{where}: no volume of that name")
        if m.get("subPath") or m.get("subPathExpr"):
            raise Unsupported(f"{where}: subPath is not supported by the node runner")
        parts = [p for p in target.split("/") if p]
        if not target.startswith(SECRETS_ROOT + "/") or ".." in parts:
            raise Unsupported(
                f"{where}: mountPath {target!r} is not under {SECRETS_ROOT}/ (the node runner "
                "mounts volumes only there)"
            )
        out.append(Mount(volumes[name].path, "/" + "/".join(parts), bool(m.get("readOnly"))))
    return tuple(out)


def plan_pod(
    pod: Mapping[str, Any],
    pod_ip: str,
    host_ip: str,
    python: str,
    node_root: str = "/",
    pod_dir: str = "/",
) -> PodPlan:
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    uid = str(meta.get("uid", ""))
    if not re.fullmatch(r"[0-9a-f-]{36}", uid):
        raise Unsupported(f"pod uid {uid!r} is not a Kubernetes UID")
    containers = list(spec.get("containers") or [])
    qos = qos_class(containers)
    pod_cgroup = f"kubepods/{qos}/pod{uid}" if qos != "guaranteed" else f"kubepods/pod{uid}"
    volumes = plan_volumes(spec, node_root, pod_dir)
    by_name = {v.name: v for v in volumes}

    def process(container: Mapping[str, Any], init: bool) -> ProcessPlan:
        env = _env(container, pod, pod_ip, host_ip)
        argv = [expand(a, env) for a in resolve_argv(container, python)]
        cid = container_id(uid, str(container.get("name")), init)
        user, group = _ids(container, spec)
        return ProcessPlan(
            str(container.get("name")),
            cid,
            tuple(argv),
            env,
            user,
            group,
            f"{pod_cgroup}/{cid}",
            init,
            _mounts(container, by_name),
        )

    return PodPlan(
        uid=uid,
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        qos=qos,
        cgroup=pod_cgroup,
        init_containers=tuple(process(c, True) for c in spec.get("initContainers") or []),
        containers=tuple(process(c, False) for c in containers),
        readiness={
            str(c.get("name")): c["readinessProbe"]
            for c in containers
            if isinstance(c.get("readinessProbe"), dict)
        },
        host_network=bool(spec.get("hostNetwork")),
        volumes=volumes,
        restart_policy=str(spec.get("restartPolicy") or "Always"),
    )
