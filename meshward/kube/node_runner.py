"""`meshward node run --kubernetes --node N`: the development node runner.

It stands in for the kubelet and a container runtime on machines that have neither (there are no
images here): it registers Node N (capacity, a Ready condition, its address), watches the Pods
bound to N and runs each as the local mesh runs a pod (`pod_runtime`), reports their status,
and removes a Pod's namespace, cgroups and processes when the Pod is deleted (then confirms the
deletion, as the kubelet does). It runs only meshward's own commands and the demo's apps. It is a
test and development tool, not a kubelet: no images, no image file systems, no resource limits,
volumes only under /var/run/secrets, configMaps and tokens written once.

Service names resolve as cluster DNS would answer for a headless Service: every pod's hosts file
maps `<svc>`, `<svc>.<ns>`, `<svc>.<ns>.svc` and `<svc>.<ns>.svc.cluster.local` to the ready
endpoints of the Service's EndpointSlices (there is no kube-proxy: the sidecars find the
destination workload by its pod address).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import logging
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ca.kube import api as kapi
from ca.kube.watch import Reflector
from meshward.kube.cluster import KUBE_VERSION
from meshward.kube.pod_runtime import NodeContext, PodRuntime
from meshward.kube.pod_status import node_object, node_status
from meshward.pods import PodNetwork
from meshward_common.errors import ConfigError

log = logging.getLogger(__name__)

HEARTBEAT_S = 20.0
CLUSTER_DOMAIN = "cluster.local"
RUNNER_LABEL = "node.meshward.io/runner"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
NOT_READY_TAINT = "node.kubernetes.io/not-ready"


@dataclass(frozen=True)
class RunnerConfig:
    node: str
    kubeconfig: Path | None
    root: Path  # this node's directory
    prefix: str  # meshward.pods network: netns <prefix>-*, bridge <prefix>-br
    subnet: str
    pod_cidr: str  # the addresses this node hands out (a part of subnet no other node uses)
    python: str = sys.executable

    def __post_init__(self) -> None:
        try:
            subnet = ipaddress.IPv4Network(self.subnet)
            cidr = ipaddress.IPv4Network(self.pod_cidr)
        except ValueError as exc:
            raise ConfigError(f"node run: {exc}") from exc
        if not cidr.subnet_of(subnet):
            raise ConfigError(f"node run: --pod-cidr {cidr} is not inside --subnet {subnet}")


def hosts_for(
    namespace: str, services: Mapping[str, dict[str, Any]], slices: Mapping[str, dict[str, Any]]
) -> dict[str, list[str]]:
    """A pod's hosts table: every Service with ready endpoints, by its DNS names (the short
    name only for Services of the pod's own namespace)."""
    addresses: dict[tuple[str, str], list[str]] = {}
    for es in slices.values():
        meta = es.get("metadata") or {}
        ns, svc = str(meta.get("namespace", "")), (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
        if not svc or f"{ns}/{svc}" not in services:
            continue
        for endpoint in es.get("endpoints") or []:
            if (endpoint.get("conditions") or {}).get("ready") is False:
                continue
            for ip in endpoint.get("addresses") or []:
                found = addresses.setdefault((ns, str(svc)), [])
                if ip not in found:
                    found.append(str(ip))
    table: dict[str, list[str]] = {}
    for (ns, svc), ips in sorted(addresses.items()):
        names = [f"{svc}.{ns}", f"{svc}.{ns}.svc", f"{svc}.{ns}.svc.{CLUSTER_DOMAIN}"]
        if ns == namespace:
            names.insert(0, svc)
        for name in names:
            table[name] = sorted(ips, key=ipaddress.IPv4Address)
    return table


class NodeRunner:
    def __init__(self, cfg: RunnerConfig, api: kapi.KubeApi) -> None:
        self.cfg = cfg
        self.api = api
        self.network = PodNetwork.join(cfg.prefix, cfg.subnet)
        self.host_ip = self.network.host_ip
        self.runtimes: dict[str, PodRuntime] = {}  # by pod uid
        self._stopping: set[str] = set()
        self._removals: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self.reflectors = {
            r.kind: Reflector(api, r, self._wake.set)
            for r in (kapi.PODS, kapi.SERVICES, kapi.ENDPOINT_SLICES)
        }
        self.context = NodeContext(
            node=cfg.node,
            root=cfg.root,
            host_ip=self.host_ip,
            python=cfg.python,
            network=self.network,
            extra_env=self._service_env(),
        )

    def _service_env(self) -> dict[str, str]:
        """KUBERNETES_SERVICE_HOST/PORT as the kubelet sets them: here the API server itself
        (there is no Service VIP), reachable from hostNetwork pods."""
        server = self.api.server.removeprefix("https://").removeprefix("http://")
        host, _, port = server.rpartition(":")
        return {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port}

    # -- the node -------------------------------------------------------------------------------

    async def register(self) -> None:
        body = node_object(self.cfg.node, {RUNNER_LABEL: "true"})
        try:
            await self.api.call("POST", "/api/v1/nodes", body)
        except kapi.KubeApiError as exc:
            if exc.status != 409:  # 409: registered before (a restarted runner)
                raise
        await self._heartbeat(dt.datetime.now(dt.UTC))
        await self._untaint()

    async def _untaint(self) -> None:
        """The API server taints a new Node not-ready until the node lifecycle controller sees it
        Ready; that controller is off in a cluster of development nodes (they send no leases),
        so the runner lifts the taint once its node is Ready, and only that taint."""
        node = await self.api.get(f"/api/v1/nodes/{self.cfg.node}")
        taints = ((node or {}).get("spec") or {}).get("taints") or []
        kept = [t for t in taints if t.get("key") != NOT_READY_TAINT]
        if len(kept) != len(taints):
            await self.api.call(
                "PATCH", f"/api/v1/nodes/{self.cfg.node}", {"spec": {"taints": kept}},
                "application/merge-patch+json",
            )  # fmt: skip

    async def _heartbeat(self, since: dt.datetime) -> None:
        now = dt.datetime.now(dt.UTC)
        memory_kib = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 1024
        status = node_status(self.host_ip, now, since, os.cpu_count() or 1, memory_kib,
                             f"{KUBE_VERSION}-meshward-node-runner")  # fmt: skip
        await self.api.call(
            "PATCH", f"/api/v1/nodes/{self.cfg.node}/status", {"status": status},
            "application/merge-patch+json",
        )  # fmt: skip

    async def _heartbeats(self) -> None:
        since = dt.datetime.now(dt.UTC)
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            try:
                await self._heartbeat(since)
            except kapi.KubeApiError as exc:
                log.warning("node %s: heartbeat failed: %s", self.cfg.node, exc)

    # -- pods -----------------------------------------------------------------------------------

    def _pick_ip(self) -> str:
        taken = {r.pod_ip for r in self.runtimes.values()}
        for ip in ipaddress.IPv4Network(self.cfg.pod_cidr).hosts():
            if str(ip) not in taken and str(ip) != self.host_ip:
                return str(ip)
        raise ConfigError(f"node {self.cfg.node}: --pod-cidr {self.cfg.pod_cidr} is full")

    async def reconcile(self) -> None:
        pods = self.reflectors["Pod"].objects
        mine = {
            str(p["metadata"]["uid"]): p
            for p in pods.values()
            if (p.get("spec") or {}).get("nodeName") == self.cfg.node
        }
        for uid, pod in mine.items():
            meta = pod["metadata"]
            if meta.get("deletionTimestamp"):
                if uid not in self._stopping:
                    self._stopping.add(uid)
                    grace = float(meta.get("deletionGracePeriodSeconds") or 0)
                    self._spawn_removal(uid, pod, grace)
            elif uid not in self.runtimes:
                log.info("pod %s/%s bound here: starting it", meta.get("namespace"),
                         meta.get("name"))  # fmt: skip
                runtime = PodRuntime(self.api, self.context, pod, self._pick_ip())
                self.runtimes[uid] = runtime
                runtime.start()
        for uid in [u for u in self.runtimes if u not in mine and u not in self._stopping]:
            self._stopping.add(uid)  # deleted at once (grace 0) or moved: just stop it
            self._spawn_removal(uid, None, 0.0)
        self._write_hosts()

    def _spawn_removal(self, uid: str, pod: dict[str, Any] | None, grace: float) -> None:
        task = asyncio.create_task(self._remove(uid, pod, grace), name=f"remove {uid}")
        self._removals.add(task)
        task.add_done_callback(self._removals.discard)

    async def _remove(self, uid: str, pod: dict[str, Any] | None, grace: float) -> None:
        runtime = self.runtimes.get(uid)
        try:
            if runtime is not None:
                await runtime.stop(grace)
                log.info("pod %s: stopped and removed", runtime.key)
            if pod is not None:
                meta = pod["metadata"]
                path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
                body = {"gracePeriodSeconds": 0, "preconditions": {"uid": uid}}
                with contextlib.suppress(kapi.KubeApiError):  # gone already, or recreated
                    await self.api.call("DELETE", path, body)
        finally:
            self.runtimes.pop(uid, None)
            self._stopping.discard(uid)

    def _write_hosts(self) -> None:
        services = self.reflectors["Service"].objects
        slices = self.reflectors["EndpointSlice"].objects
        for runtime in self.runtimes.values():
            ready = runtime.host_network and runtime.hosts_file.parent.is_dir()
            if ready or (runtime.net_pod is not None and runtime.net_pod.name in self.network.pods):
                try:
                    runtime.write_hosts(hosts_for(runtime.namespace, services, slices))
                except (ConfigError, OSError) as exc:
                    log.warning("pod %s: hosts file not written: %s", runtime.key, exc)

    async def run(self) -> None:
        await self.register()
        tasks = [
            asyncio.create_task(r.run(), name=f"watch {k}") for k, r in self.reflectors.items()
        ]
        tasks.append(asyncio.create_task(self._heartbeats(), name="heartbeat"))
        try:
            await asyncio.gather(*(r.synced.wait() for r in self.reflectors.values()))
            log.info("node %s: registered; running the Pods bound to it (pod addresses %s)",
                     self.cfg.node, self.cfg.pod_cidr)  # fmt: skip
            while True:
                await self._wake.wait()
                self._wake.clear()
                await self.reconcile()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.shutdown()

    async def shutdown(self) -> None:
        """Stop every pod of this node (as a kubelet's node shutdown does); the Pod objects stay."""
        runtimes = list(self.runtimes.values())
        await asyncio.gather(*(r.stop(2.0) for r in runtimes), return_exceptions=True)
        self.runtimes.clear()


async def run_node(cfg: RunnerConfig) -> None:
    api = await kapi.connect(cfg.kubeconfig)
    runner = NodeRunner(cfg, api)
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, main.cancel)
    try:
        await runner.run()
    except asyncio.CancelledError:
        log.info("node %s: stopping (every pod's processes, namespaces and cgroups)", cfg.node)
    finally:
        await api.close()
