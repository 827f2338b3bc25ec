"""One Pod on the development node runner, from its first sight to its removal.

Set up as the local mesh makes a pod (`meshward.pods`: a network namespace on the bridge, a veth,
its own IP and hosts file; a hostNetwork Pod stays in the host's network), then its volumes
(`pod_volumes`), then the init containers one by one to completion, then every container; each
process started through `container_entry` (its kubelet-named cgroup, its volumes, its user). Then
it watches: a container that exits is restarted as the Pod's restartPolicy says (with the
kubelet's doubling back-off), readiness probes (httpGet, tcpSocket) are run from the node as the
kubelet runs them, and every change is reported as the Pod's status. `stop()` ends every process
(SIGTERM, then SIGKILL after the grace period) and removes the namespace and cgroups.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp

from ca.kube.api import KubeApi, KubeApiError
from meshward.kube.pod_cgroups import cgroup2_root, remove_cgroups
from meshward.kube.pod_plan import PodPlan, ProcessPlan, Unsupported, plan_pod
from meshward.kube.pod_status import ContainerFacts, condition_values, pod_status
from meshward.kube.pod_volumes import NotYet, fill_volume
from meshward.pods import Pod, PodNetwork

log = logging.getLogger(__name__)

BACKOFF_START_S = 1.0
BACKOFF_CAP_S = 30.0
RETRY_S = 1.0
STOP_GRACE_CAP_S = 10.0
BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/",
    "PYTHONUNBUFFERED": "1",  # the meshward image's: a crash's last words reach the log
}


@dataclass
class Container:
    plan: ProcessPlan
    image: str
    probe: Mapping[str, Any] | None = None
    ports: Mapping[str, int] = field(default_factory=dict)
    facts: ContainerFacts | None = None
    proc: asyncio.subprocess.Process | None = None
    next_start: float = 0.0
    backoff: float = BACKOFF_START_S
    failures: int = 0
    next_probe: float = 0.0


@dataclass(frozen=True)
class NodeContext:
    """What every Pod on this node shares."""

    node: str
    root: Path  # the node's directory: host/ (hostPath volumes), pods/<uid>/, logs/
    host_ip: str
    python: str
    network: PodNetwork
    extra_env: Mapping[str, str]


def pod_short_name(name: str, uid: str) -> str:
    """The pod's name in `meshward.pods` (its netns is `<prefix>-<this>`): the Pod's name, cut to
    fit, and the start of its UID (names repeat across namespaces and over time)."""
    base = "".join(ch if ch.isalnum() or ch == "-" else "-" for ch in name.lower())[:24]
    return f"{base.strip('-')}-{uid[:6]}"


class PodRuntime:
    def __init__(
        self, api: KubeApi, node: NodeContext, pod: dict[str, Any], pod_ip: str,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:  # fmt: skip
        self.api = api
        self.node = node
        self.pod = pod
        meta = pod.get("metadata") or {}
        self.uid = str(meta.get("uid", ""))
        self.namespace = str(meta.get("namespace", ""))
        self.name = str(meta.get("name", ""))
        self.host_network = bool((pod.get("spec") or {}).get("hostNetwork"))
        self.pod_ip = node.host_ip if self.host_network else pod_ip
        self.dir = node.root / "pods" / self.uid
        self.hosts_file = self.dir / "hosts"  # a hostNetwork pod's /etc/hosts
        self.clock = clock
        self.started = clock()
        self.transitions: dict[str, dt.datetime] = {}
        self.plan: PodPlan | None = None
        self.init: list[Container] = []
        self.containers: list[Container] = []
        self.net_pod: Pod | None = None
        self.failure = ""
        self._sent: dict[str, Any] | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"pod {self.key}")

    async def _run(self) -> None:
        try:
            await self._prepare()
            for c in self.init:
                if not await self._run_to_completion(c):
                    await asyncio.Event().wait()  # failed for good: reported until deleted
            await self._publish()
            while True:
                await self._tend()
                await asyncio.sleep(0.2)
        except Unsupported as exc:
            self.failure = str(exc)
            log.warning("pod %s: not run: %s", self.key, exc)
            await self._publish()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("pod %s: the runner failed", self.key)
            raise

    async def _prepare(self) -> None:
        node, spec = self.node, self.pod.get("spec") or {}
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.plan = plan = plan_pod(
            self.pod, self.pod_ip, node.host_ip, node.python, str(node.root), str(self.dir)
        )
        images = {
            str(c.get("name")): str(c.get("image", ""))
            for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
        }
        raw = {str(c.get("name")): c for c in spec.get("containers") or []}
        for p in plan.init_containers:
            self.init.append(Container(p, images[p.container], facts=self._waiting(p, images)))
        for p in plan.containers:
            ports = {
                str(x["name"]): int(x["containerPort"])
                for x in raw[p.container].get("ports") or []
                if x.get("name") and isinstance(x.get("containerPort"), int)
            }
            self.containers.append(
                Container(p, images[p.container], plan.readiness.get(p.container), ports,
                          self._waiting(p, images))
            )  # fmt: skip
        self._record()
        if not self.host_network:
            await asyncio.to_thread(self._add_netns)
        else:
            self.write_hosts({})
        await self._publish()
        await self._fill_volumes()
        self._make_cgroups()

    def _waiting(self, p: ProcessPlan, images: Mapping[str, str]) -> ContainerFacts:
        reason = "PodInitializing" if not p.init else "ContainerCreating"
        return ContainerFacts(p.container, p.container_id, images[p.container], "waiting", reason)

    def write_hosts(self, table: Mapping[str, list[str]]) -> None:
        """A hostNetwork pod's /etc/hosts, as the kubelet manages it: the host's own lines, then
        the Services' names. Rewritten in place (containers see it through a bind mount)."""
        if self.net_pod is not None:
            self.node.network.set_pod_hosts(self.net_pod.name, table)
            return
        if not self.host_network:
            return
        host = Path("/etc/hosts").read_text(encoding="utf-8", errors="replace")
        lines = [f"{ip}\t{name}\n" for name, ips in table.items() for ip in ips[:1]]
        text = (
            host.rstrip("\n") + "\n# Kubernetes Services (meshward node runner)\n" + "".join(lines)
        )
        with open(self.hosts_file, "a+", encoding="utf-8") as fh:
            fh.seek(0)
            fh.truncate()
            fh.write(text)
        self.hosts_file.chmod(0o644)

    def _add_netns(self) -> None:
        net = self.node.network
        name = pod_short_name(self.name, self.uid)
        if name in net.pods:
            net.remove_pod(name)
        self.net_pod = net.add_pod(name, self.pod_ip)

    async def _fill_volumes(self) -> None:
        assert self.plan is not None
        owners: dict[str, int] = {}
        for p in [*self.plan.init_containers, *self.plan.containers]:
            for m in p.mounts:
                owners.setdefault(m.source, p.uid)
        for volume in self.plan.volumes:
            while True:
                try:
                    await fill_volume(
                        self.api, self.pod, volume, self.pod_ip, self.node.host_ip,
                        owners.get(volume.path),
                    )  # fmt: skip
                    break
                except NotYet as exc:
                    await self._wait_with(str(exc))

    async def _wait_with(self, message: str) -> None:
        for c in [*self.init, *self.containers]:
            if c.facts is not None and c.facts.state == "waiting":
                c.facts = replace(c.facts, message=message)
        await self._publish()
        await asyncio.sleep(RETRY_S)

    def _cgroup(self, p: ProcessPlan) -> Path:
        return cgroup2_root() / p.cgroup

    def _make_cgroups(self) -> None:
        for c in [*self.init, *self.containers]:
            self._cgroup(c.plan).mkdir(parents=True, exist_ok=True)

    def _record(self) -> None:
        """What `meshward down` and `exec` need if this runner is gone: netns, cgroups, logs."""
        assert self.plan is not None
        record = {
            "namespace": self.namespace,
            "name": self.name,
            "uid": self.uid,
            "netns": ""
            if self.host_network
            else f"{self.node.network.prefix}-{pod_short_name(self.name, self.uid)}",
            "ip": self.pod_ip,
            "cgroups": [p.cgroup for p in [*self.plan.init_containers, *self.plan.containers]],
            "pod_cgroup": self.plan.cgroup,
            "containers": {
                p.container: {"uid": p.uid, "gid": p.gid, "log": str(self._log_path(p))}
                for p in [*self.plan.init_containers, *self.plan.containers]
            },
        }
        (self.node.root / "records").mkdir(parents=True, exist_ok=True)
        (self.node.root / "records" / f"{self.uid}.json").write_text(json.dumps(record) + "\n")

    def _log_path(self, p: ProcessPlan) -> Path:
        return self.node.root / "logs" / f"{self.namespace}_{self.name}_{p.container}.log"

    # -- processes ------------------------------------------------------------------------------

    async def _spawn(self, c: Container) -> None:
        p = c.plan
        spec = {
            "argv": list(p.argv),
            "env": {**BASE_ENV, "HOSTNAME": self.name, **self.node.extra_env, **p.env},
            "uid": p.uid,
            "gid": p.gid,
            "cgroup_fd": -1,
            "hosts_file": str(self.hosts_file) if self.host_network else "",
            "mounts": [
                {"source": m.source, "target": m.target, "read_only": m.read_only} for m in p.mounts
            ],
        }
        cgroup_fd = os.open(self._cgroup(p) / "cgroup.procs", os.O_WRONLY)
        spec["cgroup_fd"] = cgroup_fd
        spec_file = self.dir / f"{p.container}.json"
        fd = os.open(spec_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(spec, fh)
        entry = [self.node.python, "-m", "meshward.kube.container_entry", str(spec_file)]
        if self.net_pod is not None:
            argv = ["ip", "netns", "exec", self.net_pod.netns, *entry]
        else:
            argv = ["unshare", "--mount", "--propagation", "private", *entry]
        log_path = self._log_path(p)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with log_path.open("ab") as out:
                out.write(f"--- node runner: starting {p.container} of {self.key}\n".encode())
                out.flush()
                c.proc = await asyncio.create_subprocess_exec(
                    *argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True, pass_fds=(cgroup_fd,),
                )  # fmt: skip
        finally:
            os.close(cgroup_fd)
        restarts = c.facts.restarts if c.facts is not None else 0
        ready = c.probe is None and not p.init
        c.facts = ContainerFacts(p.container, p.container_id, c.image, "running",
                                 started_at=self.clock(), restarts=restarts, ready=ready)  # fmt: skip
        c.failures, c.next_probe = 0, 0.0
        log.info("pod %s: started %s (pid %d)", self.key, p.container, c.proc.pid)

    def _exited(self, c: Container, code: int) -> None:
        assert c.facts is not None
        c.facts = replace(c.facts, state="terminated", exit_code=code, ready=False,
                          finished_at=self.clock())  # fmt: skip
        c.proc = None
        log.info("pod %s: %s exited with %d", self.key, c.plan.container, code)

    async def _run_to_completion(self, c: Container) -> bool:
        """Run an init container until it succeeds (True), or fails under restartPolicy Never."""
        policy = self.plan.restart_policy if self.plan else "Always"
        while True:
            await self._spawn(c)
            await self._publish()
            assert c.proc is not None
            code = await c.proc.wait()
            self._exited(c, code)
            await self._publish()
            if code == 0:
                return True
            if policy == "Never":
                return False
            await self._back_off(c)

    async def _back_off(self, c: Container) -> None:
        assert c.facts is not None
        c.facts = replace(c.facts, restarts=c.facts.restarts + 1)
        await asyncio.sleep(c.backoff)
        c.backoff = min(BACKOFF_CAP_S, c.backoff * 2)

    async def _tend(self) -> None:
        assert self.plan is not None
        now = time.monotonic()
        for c in self.containers:
            if c.proc is None and c.facts is not None and c.facts.state == "waiting":
                await self._spawn(c)
            elif c.proc is not None and c.proc.returncode is not None:
                self._exited(c, c.proc.returncode)
                if self._restarts(c):
                    c.next_start = now + c.backoff
                    c.backoff = min(BACKOFF_CAP_S, c.backoff * 2)
            elif c.proc is None and c.next_start and now >= c.next_start and self._restarts(c):
                assert c.facts is not None
                c.facts = replace(c.facts, restarts=c.facts.restarts + 1)
                c.next_start = 0.0
                await self._spawn(c)
            elif c.proc is not None and c.probe is not None and now >= c.next_probe:
                await self._probe(c, now)
        await self._publish()

    def _restarts(self, c: Container) -> bool:
        policy = self.plan.restart_policy if self.plan else "Always"
        code = c.facts.exit_code if c.facts is not None else 0
        return policy == "Always" or (policy == "OnFailure" and code != 0)

    async def _probe(self, c: Container, now: float) -> None:
        probe = c.probe or {}
        assert c.facts is not None
        started = c.facts.started_at or self.clock()
        delay = float(probe.get("initialDelaySeconds") or 0)
        if (self.clock() - started).total_seconds() < delay:
            return
        c.next_probe = now + float(probe.get("periodSeconds") or 10)
        ok = await probe_once(probe, self.pod_ip, c.ports)
        if ok:
            c.failures = 0
            c.facts = replace(c.facts, ready=True)
        else:
            c.failures += 1
            if c.failures >= int(probe.get("failureThreshold") or 3) or not c.facts.ready:
                c.facts = replace(c.facts, ready=False)

    # -- status ---------------------------------------------------------------------------------

    def _status(self) -> dict[str, Any]:
        plan = self.plan
        return pod_status(
            init=[c.facts for c in self.init if c.facts is not None],
            containers=[c.facts for c in self.containers if c.facts is not None],
            restart_policy=plan.restart_policy if plan else "Always",
            pod_ip=self.pod_ip if (self.net_pod is not None or self.host_network) else "",
            host_ip=self.node.host_ip,
            qos=plan.qos if plan else "besteffort",
            started=self.started,
            transitions=self.transitions,
            failure=self.failure,
        )

    async def _publish(self) -> None:
        if self.plan is None and not self.failure:
            return
        status = self._status()
        if self._sent is not None:
            before = condition_values(self._sent)
            moved = [k for k, v in condition_values(status).items() if before.get(k) != v]
            if moved:
                for kind in moved:
                    self.transitions[kind] = self.clock()
                status = self._status()
        if status == self._sent:
            return
        path = f"/api/v1/namespaces/{self.namespace}/pods/{self.name}/status"
        try:
            await self.api.call("PATCH", path, {"status": status}, "application/merge-patch+json")
        except KubeApiError as exc:
            log.warning("pod %s: status not reported: %s", self.key, exc)
            return
        self._sent = status

    # -- stop -----------------------------------------------------------------------------------

    async def stop(self, grace_s: float) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        procs = [c.proc for c in [*self.init, *self.containers] if c.proc is not None]
        for proc in procs:
            _signal_group(proc.pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(p.wait() for p in procs)), min(grace_s, STOP_GRACE_CAP_S)
            )
        for proc in procs:
            _signal_group(proc.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                await proc.wait()
        await asyncio.to_thread(self._teardown)

    def _teardown(self) -> None:
        if self.plan is not None:
            remove_cgroups([p.cgroup for p in [*self.plan.init_containers, *self.plan.containers]],
                           self.plan.cgroup)  # fmt: skip
        if self.net_pod is not None:
            self.node.network.remove_pod(self.net_pod.name)
            self.net_pod = None
        shutil.rmtree(self.dir, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            (self.node.root / "records" / f"{self.uid}.json").unlink()


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def probe_once(probe: Mapping[str, Any], pod_ip: str, ports: Mapping[str, int]) -> bool:
    """One run of an httpGet or tcpSocket probe from the node, as the kubelet probes."""
    timeout = float(probe.get("timeoutSeconds") or 1)

    def port_of(value: Any) -> int:
        return int(ports.get(str(value), value)) if not isinstance(value, int) else value

    try:
        if "httpGet" in probe:
            get = probe["httpGet"]
            host = str(get.get("host") or pod_ip)
            url = f"http://{host}:{port_of(get.get('port'))}{get.get('path') or '/'}"
            limits = aiohttp.ClientTimeout(total=timeout)
            async with (
                aiohttp.ClientSession(timeout=limits) as session,
                session.get(url, allow_redirects=False) as answer,
            ):
                return 200 <= answer.status < 400
        if "tcpSocket" in probe:
            sock = probe["tcpSocket"]
            host = str(sock.get("host") or pod_ip)
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port_of(sock.get("port"))), timeout
            )
            writer.close()
            return True
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
        return False
    return True  # exec and gRPC probes are not run by this runner: the container counts as ready
