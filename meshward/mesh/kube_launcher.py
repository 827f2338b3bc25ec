"""The steps of `meshward up --kubernetes` that differ from the file-based mesh, and their undoing.

up:   bridge -> Jaeger -> the cluster (etcd, API server, controller manager, scheduler) ->
      `manifest generate` applied (CRDs, RBAC, the agents' DaemonSet, the webhook) -> the control
      plane on the host (`ca serve --kubernetes`, the webhook on loopback) -> a node runner per
      node (they run the agents' DaemonSet pods) -> the demo namespace labelled for injection,
      its Services and Pods (injected by the webhook), the ingress Pod -> every Pod Ready.
down: the supervised processes stop (each node runner removes its pods' processes, namespaces
      and cgroups); whatever a crashed runner left is removed from its records; the cluster's
      directory goes with the state.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from meshward.install.manifests import generate
from meshward.install.values import parse_values
from meshward.kube.apply import apply_objects, client, wait
from meshward.kube.pod_cgroups import remove_cgroups
from meshward.mesh import kube_spec as ks
from meshward.mesh.components import Component, JaegerPorts
from meshward.mesh.layout import StateLayout
from meshward.mesh.readiness import file_present, tcp_open
from meshward.mesh.spec import APP_NAMESPACE, INGRESS_NAMESPACE, MeshSpec
from meshward.pods import PodNetwork

APPLY_TIMEOUT_S = 120.0
AGENT_APP = "meshward-node-agent"


def components(spec: MeshSpec, *, jaeger: bool) -> list[Component]:
    out: list[Component] = [Component("jaeger", "jaeger")] if jaeger else []
    out.append(Component("kube", "kube"))
    out.append(Component("control-plane", "control-plane"))
    out += [Component(f"node-{node}", "node", node=node) for node in spec.nodes]
    return out


def prepare(spec: MeshSpec, layout: StateLayout) -> None:
    """The bridge (the node runners add the pods) and the plug-in CA files (`ca dev-certs`)."""
    from ca.dev_certs import write_dev_certs

    PodNetwork(spec.options.prefix, spec.options.subnet).create()
    out = Path(ks.cacerts_dir(layout)).parent
    write_dev_certs(out, spec.options.trust_domain, ks.CLUSTER_NAME, dt.datetime.now(dt.UTC))
    (layout.root / "nodes").mkdir(exist_ok=True)


def install(spec: MeshSpec, layout: StateLayout, jaeger: JaegerPorts | None) -> None:
    """`meshward manifest generate` for this mesh, applied; the injector's settings written
    where the control plane reads them (the same values as the ConfigMap)."""
    values = parse_values(ks.install_sets(spec, layout, jaeger))
    Path(ks.injector_config_file(layout)).write_text(
        yaml.safe_dump(values.injector.as_dict(), sort_keys=True)
    )
    api = client(Path(ks.kubeconfig(layout)))
    try:
        wait("the API server's default namespace", lambda: _has_default(api), APPLY_TIMEOUT_S)
        apply_objects(api, generate(values))
    finally:
        api.close()  # type: ignore[no-untyped-call]


def _has_default(api: Any) -> bool:
    from kubernetes import client as k8s

    return bool(k8s.CoreV1Api(api).read_namespace("default"))


def apply_demo(spec: MeshSpec, layout: StateLayout, jaeger: JaegerPorts | None) -> None:
    api = client(Path(ks.kubeconfig(layout)))
    try:
        apply_objects(api, [*ks.demo_objects(spec), *ks.ingress_objects(spec, jaeger)])
    finally:
        api.close()  # type: ignore[no-untyped-call]


def cluster_ready(layout: StateLayout) -> bool:
    """The cluster wrapper wrote its kubeconfig and says ready (its log's line)."""
    log = layout.log("kube")
    kubeconfig = file_present(Path(ks.kubeconfig(layout)))
    try:
        return kubeconfig() and "kube cluster: API server at" in log.read_text(errors="replace")
    except OSError:
        return False


def control_plane_ready(spec: MeshSpec) -> bool:
    o = spec.options
    return tcp_open("127.0.0.1", o.control_plane_port) and tcp_open("127.0.0.1", o.webhook_port)


def _ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def list_pods(layout: StateLayout, namespace: str) -> list[dict[str, Any]]:
    """The Pods of a namespace as plain JSON (what the API server sent)."""
    from kubernetes import client as k8s

    api = client(Path(ks.kubeconfig(layout)))
    try:
        found = k8s.CoreV1Api(api).list_namespaced_pod(namespace, _request_timeout=5)
        items: list[dict[str, Any]] = api.sanitize_for_serialization(found).get("items") or []  # type: ignore[no-untyped-call]
        return items
    finally:
        api.close()  # type: ignore[no-untyped-call]


def pods_not_ready(spec: MeshSpec, layout: StateLayout) -> list[str]:
    """One line per expected Pod (the demo's, the ingress, a node agent per node) that the API
    does not report Ready, or why the API could not be asked."""
    try:
        pods = {
            (ns, str(p["metadata"]["name"])): p
            for ns in (APP_NAMESPACE, INGRESS_NAMESPACE)
            for p in list_pods(layout, ns)
        }
    except Exception as exc:  # any failure means: cannot tell, so not ready
        return [f"kube: the API server did not answer: {exc}"]
    wanted = sorted({(APP_NAMESPACE, p.name) for p in spec.pods})
    wanted.append((INGRESS_NAMESPACE, ks.INGRESS_POD))
    problems = []
    for ns, name in wanted:
        pod = pods.get((ns, name))
        if pod is None:
            problems.append(f"pod {ns}/{name}: not in the API")
        elif not _ready(pod):
            phase = (pod.get("status") or {}).get("phase")
            problems.append(f"pod {ns}/{name}: not ready (phase {phase})")
    agents = [
        p for (ns, _), p in pods.items()
        if ns == INGRESS_NAMESPACE and (p["metadata"].get("labels") or {}).get("app") == AGENT_APP
    ]  # fmt: skip
    nodes = {(p.get("spec") or {}).get("nodeName") for p in agents if _ready(p)}
    problems += [f"node agent on {n}: no Ready pod" for n in spec.nodes if n not in nodes]
    return problems


def overlay(spec: MeshSpec, layout: StateLayout) -> MeshSpec:
    """The spec with each demo pod's address and netns as its node runner made them (the
    runners' records), so `exec`, `status` and `check` reach the pods by the same names."""
    made = {
        str(r.get("name")): r
        for r in records(layout)
        if r.get("namespace") == APP_NAMESPACE and r.get("netns")
    }
    pods = tuple(
        replace(p, ip=str(made[p.name]["ip"]), netns=str(made[p.name]["netns"]))
        if p.name in made
        else p
        for p in spec.pods
    )
    return replace(spec, pods=pods)


def records(layout: StateLayout) -> list[dict[str, Any]]:
    """The node runners' records of their pods (netns, cgroups, logs), on every node."""
    out = []
    for path in sorted((layout.root / "nodes").glob("*/records/*.json")):
        with contextlib.suppress(OSError, ValueError):
            out.append(json.loads(path.read_text()))
    return out


def teardown(layout: StateLayout) -> list[str]:
    """After every process stopped: what a crashed node runner may have left (the processes in
    its pods' cgroups, the cgroups; the namespaces go with the prefix), then the cluster's and
    the nodes' directories. Returns the cgroups that could not be removed."""
    left = []
    for record in records(layout):
        remove_cgroups(list(record.get("cgroups") or []), str(record.get("pod_cgroup") or ""))
        left += leftover_cgroups(record)
    for name in ("kube", "nodes", "cacerts"):
        shutil.rmtree(layout.root / name, ignore_errors=True)
    Path(ks.injector_config_file(layout)).unlink(missing_ok=True)
    return left


def leftover_cgroups(record: dict[str, Any]) -> list[str]:
    from meshward.kube.pod_cgroups import cgroup2_root

    pod = str(record.get("pod_cgroup") or "")
    return [f"cgroup {pod}"] if pod and (cgroup2_root() / pod).exists() else []
