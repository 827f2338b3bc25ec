"""The mesh's state from the API server: Pods, Services, EndpointSlices, Istio's security CRDs
and ServiceEntries (`networking.istio.io`: a federated mesh's services).

`registry_from_cluster` and `policy_document` are pure. `KubeMeshStateSource` has the file
source's interface (`registry`, `state`, `changed`, `trust_domain`, `watch()`): one reflector per
resource, and after each change the state is rebuilt and subscribers woken. A policy object the
engine refuses, or a ServiceEntry `meshward_common.service_entry` refuses (the rules of the
`--service-entry-dir` files), is reported (a log line; `refused`, which the supervisor's metrics
read; the state dir's REFUSED_FILE, which `meshward check` reads) and its last good version stays
in force, as with a bad file in the policy directory; deleting it removes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ca.kube import REFUSED_FILE
from ca.kube import api as kapi
from ca.kube.watch import Reflector
from ca.mesh_state import (
    base_size,
    build_mesh_state,
    fit_entries,
    fit_policies,
    over_bound_reason,
    policies_size,
    service_entry_size,
)
from meshward_common import ports as mesh_ports
from meshward_common.errors import ConfigError, SpiffeIdError
from meshward_common.limits import MESH_STATE_MAX_BYTES
from meshward_common.registry import Registry, Workload
from meshward_common.service_entry import ServiceEntry, parse_service_entries
from meshward_common.spiffe_id import validate_name
from policy import parse_text
from policy.model import DEFAULT_ROOT_NAMESPACE

log = logging.getLogger(__name__)

FINISHED_PHASES = ("Succeeded", "Failed")
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
Objects = Mapping[str, dict[str, Any]]


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _services_of_pods(
    services: Objects, slices: Objects
) -> dict[tuple[str, str], tuple[str, tuple[int, ...]]]:
    """(namespace, pod) -> (service, ports) from the EndpointSlices of Services that exist."""
    out: dict[tuple[str, str], tuple[str, tuple[int, ...]]] = {}
    for key in sorted(slices):
        es = slices[key]
        ns = str(_meta(es).get("namespace", ""))
        service = str((_meta(es).get("labels") or {}).get(SERVICE_NAME_LABEL, ""))
        if not service or f"{ns}/{service}" not in services:
            continue
        ports = tuple(
            sorted(
                {int(p["port"]) for p in es.get("ports") or [] if isinstance(p.get("port"), int)}
            )
        )
        for endpoint in es.get("endpoints") or []:
            ref = endpoint.get("targetRef") or {}
            if ref.get("kind") != "Pod" or not ref.get("name"):
                continue
            pod_key = (str(ref.get("namespace") or ns), str(ref["name"]))
            # One service per workload in the mesh state: the first by name (sorted keys).
            if pod_key not in out or service < out[pod_key][0]:
                out[pod_key] = (service, ports)
    return out


def sidecar_container_id(status: dict[str, Any]) -> str:
    """The istio-proxy container's id as its runtime reported it (`containerd://<id>` ->
    `<id>`), or "" while not reported (the container is not created yet)."""
    for container in status.get("containerStatuses") or []:
        if isinstance(container, dict) and container.get("name") == mesh_ports.PROXY_CONTAINER:
            return str(container.get("containerID") or "").rpartition("://")[2]
    return ""


def workload_of_pod(pod: dict[str, Any], service: str, ports: tuple[int, ...]) -> Workload | None:
    """The registry entry of a Pod bound to a node and not finished; None otherwise."""
    meta, spec, status = _meta(pod), pod.get("spec") or {}, pod.get("status") or {}
    node = spec.get("nodeName")
    if not node or status.get("phase") in FINISHED_PHASES:
        return None
    try:
        name = validate_name("pod name", str(meta.get("name", "")))
        namespace = validate_name("namespace", str(meta.get("namespace", "")))
        account = validate_name("service account", str(spec.get("serviceAccountName") or "default"))
        node = validate_name("node name", str(node))
    except SpiffeIdError as exc:
        log.warning("Pod %s/%s left out of the mesh: %s", meta.get("namespace"), meta.get("name"),
                    exc)  # fmt: skip
        return None
    labels = meta.get("labels") or {}
    return Workload(
        name=name,
        namespace=namespace,
        service_account=account,
        node=node,
        address=str(status.get("podIP") or ""),
        service=service,
        ports=ports,
        labels={str(k): str(v) for k, v in labels.items()},
        pod_uid=str(meta.get("uid", "")),
        sidecar_container_id=sidecar_container_id(status),
    )


def registry_from_cluster(pods: Objects, services: Objects, slices: Objects) -> Registry:
    by_pod = _services_of_pods(services, slices)
    workloads = []
    for key in sorted(pods):
        pod = pods[key]
        meta = _meta(pod)
        service, ports = by_pod.get((str(meta.get("namespace")), str(meta.get("name"))), ("", ()))
        w = workload_of_pod(pod, service, ports)
        if w is not None:
            workloads.append(w)
    return Registry(tuple(workloads))


def _what(kind: str) -> str:
    """How a refusal's log line names the object: as the file sources' lines do."""
    return kind if kind == SERVICE_ENTRY_KIND else "policy"


def policy_source(obj: dict[str, Any]) -> str:
    meta = _meta(obj)
    return f"{obj.get('kind', '?')}/{meta.get('namespace', '')}/{meta.get('name', '')}"


def policy_document(obj: dict[str, Any]) -> str:
    """The object as the policy engine reads Istio's YAML (apiVersion, kind, metadata, spec)."""
    meta = _meta(obj)
    doc = {
        "apiVersion": obj.get("apiVersion"),
        "kind": obj.get("kind"),
        "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace")},
        "spec": obj.get("spec") or {},
    }
    return yaml.safe_dump(doc, sort_keys=False)


_Texts = dict[str, str]
POLICY_KINDS = ("AuthorizationPolicy", "PeerAuthentication")
SERVICE_ENTRY_KIND = "ServiceEntry"


@dataclass(frozen=True)
class _GoodEntry:
    text: str  # the object's YAML as judged (a change to it is judged again)
    entry: ServiceEntry


def _entry_size(source: str, good: _GoodEntry) -> int:
    return service_entry_size(source, good.entry)


@dataclass(frozen=True)
class _Judged:
    """What one look at the watched objects gave (made in a worker thread)."""

    registry: Registry
    policies: dict[str, str]  # source -> the good YAML in force
    entries: dict[str, _GoodEntry]  # source -> the good ServiceEntry in force
    refused: dict[str, str]  # source -> why (one line)
    refused_texts: dict[str, str]  # source -> the refused YAML (not parsed again)


@dataclass
class _Seen:
    """The judging of one kind: last good versions that stay, new good ones, refusals."""

    kept: dict[str, Any]
    changes: dict[str, Any]
    refused: dict[str, str]
    texts: dict[str, str]


class KubeMeshStateSource:
    """The mesh state from the API server; same interface as `ca.mesh_state.MeshStateSource`.

    Each look at the objects (after a change) is judged in a worker thread, never on the event
    loop: the policy objects go through the same bounded parse as policy files
    (`policy.parse.POLICY_LIMITS`), and a change that would make the state larger than
    `max_state_bytes` is refused at its source (the object, or the Pods when the registry
    outgrows it), the last good version kept. A refused version is not parsed again: only a
    change to the object is looked at."""

    def __init__(
        self,
        api: kapi.KubeApi,
        trust_domain: str,
        root_namespace: str = DEFAULT_ROOT_NAMESPACE,
        state_dir: Path | None = None,
        max_state_bytes: int = MESH_STATE_MAX_BYTES,
    ) -> None:
        self.api = api
        self.trust_domain = trust_domain
        self.root_namespace = root_namespace
        self.state_dir = state_dir
        self.max_state_bytes = max_state_bytes
        self.registry = Registry()
        self.changed = asyncio.Condition()
        self.refused: dict[str, str] = {}  # source -> why (replaced whole: metrics read it)
        self._good: dict[str, str] = {}  # policy source -> last good YAML
        self._good_entries: dict[str, _GoodEntry] = {}  # ServiceEntry source -> last good
        self._refused_texts: dict[str, str] = {}  # source -> the YAML refused
        self._registry_refused = -1  # workloads of the last registry refused for the bound
        self._dirty = asyncio.Event()
        self._bundles: dict[str, bytes] = {}
        self.reflectors = {
            r.kind: Reflector(api, r, self._dirty.set)
            for r in (
                kapi.PODS, kapi.SERVICES, kapi.ENDPOINT_SLICES,
                kapi.AUTHORIZATION_POLICIES, kapi.PEER_AUTHENTICATIONS, kapi.SERVICE_ENTRIES,
            )
        }  # fmt: skip
        self.state = build_mesh_state(self.registry, {}, trust_domain, root_namespace)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, wait: float = 60.0) -> None:
        """Start the watches and wait for every first list: nothing is served half-known."""
        self._tasks = [
            asyncio.create_task(r.run(), name=f"watch {kind}")
            for kind, r in self.reflectors.items()
        ]
        waits = [r.synced.wait() for r in self.reflectors.values()]
        try:
            await asyncio.wait_for(asyncio.gather(*waits), wait)
        except TimeoutError as exc:
            missing = [k for k, r in self.reflectors.items() if not r.synced.is_set()]
            await self.stop()
            raise ConfigError(
                f"Kubernetes API at {self.api.server}: no list of {', '.join(missing)} within "
                f"{wait:.0f}s (see the log: unreachable, or RBAC forbids it?)"
            ) from exc
        await self.refresh()

    def _seen(
        self,
        objects: Mapping[str, Objects],
        kinds: tuple[str, ...],
        good: Mapping[str, tuple[str, Any]],
        parse: Callable[[str, str], Any],
    ) -> _Seen:
        """Judge the objects of `kinds` against their last good versions (`good`: source ->
        (text, value)); a changed object is parsed by `parse(text, source)` (ConfigError: one
        line, last good kept), an object refused before and unchanged is not parsed again."""
        seen = _Seen({}, {}, {}, {})
        for kind in kinds:
            for obj in objects[kind].values():
                source = policy_source(obj)
                text = policy_document(obj)
                last = good.get(source)
                if last is not None:
                    seen.kept[source] = last[1]
                    if last[0] == text:
                        continue
                if self._refused_texts.get(source) == text:
                    seen.refused[source], seen.texts[source] = self.refused[source], text
                    continue
                try:
                    seen.changes[source] = parse(text, source)
                except ConfigError as exc:
                    log.error("%s refused, keeping the last good version: %s", _what(kind), exc)
                    seen.refused[source], seen.texts[source] = str(exc), text
        return seen

    def _judge(self, objects: Mapping[str, Objects], bundles: Mapping[str, bytes]) -> _Judged:
        def policy(text: str, source: str) -> str:
            parse_text(text, source)
            return text

        def service_entry(text: str, source: str) -> _GoodEntry:
            (entry,) = parse_service_entries(text, source)
            return _GoodEntry(text, entry)

        policies = self._seen(
            objects, POLICY_KINDS, {s: (t, t) for s, t in self._good.items()}, policy
        )
        entries = self._seen(
            objects, (SERVICE_ENTRY_KIND,),
            {s: (g.text, g) for s, g in self._good_entries.items()}, service_entry,
        )  # fmt: skip
        refused = {**policies.refused, **entries.refused}
        texts = {**policies.texts, **entries.texts}
        registry = registry_from_cluster(
            objects["Pod"], objects["Service"], objects["EndpointSlice"]
        )
        kept_size = policies_size(policies.kept) + sum(
            _entry_size(s, g) for s, g in entries.kept.items()
        )
        base = base_size(registry, self.trust_domain, self.root_namespace, bundles)
        if base + kept_size > self.max_state_bytes:
            if len(registry.workloads) != self._registry_refused:
                log.error(
                    "Pods refused, keeping the last good registry (%d workloads): %d workloads: %s",
                    len(self.registry.workloads), len(registry.workloads),
                    over_bound_reason(self.max_state_bytes),
                )  # fmt: skip
            self._registry_refused = len(registry.workloads)
            registry = self.registry
            base = base_size(registry, self.trust_domain, self.root_namespace, bundles)
        else:
            self._registry_refused = -1
        # ServiceEntries first (beside the policies in force), then the policies beside them.
        fitted_entries = fit_entries(
            base + policies_size(policies.kept), entries.kept, entries.changes,
            self.max_state_bytes, _entry_size,
        )  # fmt: skip
        entries_size = fitted_entries.size - base - policies_size(policies.kept)
        fitted = fit_policies(
            base + entries_size, policies.kept, policies.changes, self.max_state_bytes
        )
        over = {s: entries.changes[s].text for s in fitted_entries.refused}
        over.update({s: policies.changes[s] for s in fitted.refused})
        for source, text in over.items():
            why = f"{source}:1: object: {over_bound_reason(self.max_state_bytes)}"
            log.error("%s refused, keeping the last good version: %s",
                      _what(source.partition("/")[0]), why)  # fmt: skip
            refused[source], texts[source] = why, text
        return _Judged(registry, fitted.entries, fitted_entries.entries, refused, texts)

    async def refresh(self) -> bool:
        """Judge the objects as they are now (in a worker thread); True if the state changed."""
        objects = {kind: dict(r.objects) for kind, r in self.reflectors.items()}
        judged = await asyncio.to_thread(self._judge, objects, dict(self._bundles))
        self.registry, self._good = judged.registry, judged.policies
        self._good_entries = judged.entries
        self.refused, self._refused_texts = judged.refused, judged.refused_texts
        self._report_refused()
        return self._assemble()

    def _assemble(self) -> bool:
        old = self.state.version_info
        self.state = build_mesh_state(
            self.registry, self._good, self.trust_domain, self.root_namespace, self._bundles,
            [self._good_entries[s].entry for s in sorted(self._good_entries)],
        )  # fmt: skip
        return self.state.version_info != old

    def set_trust_bundles(self, bundles: Mapping[str, bytes]) -> bool:
        """New trust bundles (a root rotation); True if the served state changed."""
        if dict(bundles) == self._bundles:
            return False
        self._bundles = dict(bundles)
        return self._assemble()

    def _report_refused(self) -> None:
        if self.state_dir is None:
            return
        path = self.state_dir / REFUSED_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dict(sorted(self.refused.items())), indent=1) + "\n")
        os.replace(tmp, path)

    async def watch(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                changed = await self.refresh()
            except Exception:  # a rebuild that dies silently would freeze the mesh's state
                log.exception("mesh state rebuild failed")
                continue
            if changed:
                log.info("mesh state version %s (%d workloads)", self.state.version_info,
                         len(self.registry.workloads))  # fmt: skip
                async with self.changed:
                    self.changed.notify_all()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.api.close()
