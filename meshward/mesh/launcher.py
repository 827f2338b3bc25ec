"""`meshward up` and `meshward down`: build the local mesh in order, heal it, tear it all down.

up:   pods (netns, veth, bridge, hosts, interception rules) -> Jaeger -> control plane -> node
      agents -> each pod's sidecar and app -> ingress -> wait until every part is ready.
      A second `up` reports the running mesh and restarts only what is dead.
down: stop every recorded process, kill anything still running from the state dir or in a pod,
      remove every netns/link/hosts file with the prefix, and the state (logs are kept).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from meshward.jaeger import find_jaeger, jaeger_argv
from meshward.mesh import components as cmd
from meshward.mesh import kube_launcher as kl
from meshward.mesh import kube_spec as ks
from meshward.mesh.components import Component, JaegerPorts
from meshward.mesh.layout import StateLayout, load_options, save_options
from meshward.mesh.network import build_network, leftovers, network_exists, remove_network
from meshward.mesh.readiness import (
    file_present,
    has_net_admin,
    http_status,
    tcp_open,
    wait_until,
)
from meshward.mesh.spec import APP_PORT, MeshOptions, MeshSpec, build_spec, registry_yaml
from meshward.mesh.supervisor import Supervisor, kill_pids, pids_mentioning
from meshward.pods import list_links
from meshward_common import ports
from meshward_common.errors import ConfigError, NotReady, PermissionDenied

NEEDS_ROOT = "needs root or CAP_NET_ADMIN (try sudo)"
STEP_TIMEOUT_S = 20.0
KUBE_START_TIMEOUT_S = 120.0
NODE_STOP_GRACE_S = 30.0  # the API server on a loaded machine (ready in ~7 s here)


def require_net_admin(command: str) -> None:
    if not has_net_admin():
        raise PermissionDenied(f"meshward {command}: {NEEDS_ROOT}")


@dataclass
class UpReport:
    already_running: bool = False
    started: list[str] = field(default_factory=list)
    not_ready: list[str] = field(default_factory=list)
    jaeger: bool = False


class Launcher:
    def __init__(self, options: MeshOptions, say: Callable[[str], None] = print) -> None:
        self.layout = StateLayout(options.state_dir)
        # A mesh already running in this state dir keeps the options it was started with.
        saved = load_options(self.layout)
        self.spec: MeshSpec = build_spec(saved or options)
        self.options = self.spec.options
        self.sup = Supervisor(self.layout.run_dir, self.layout.logs)
        self.say = say
        self._jaeger_bin = find_jaeger() if self.options.jaeger else None
        self.jaeger = JaegerPorts.of(self.spec) if self._jaeger_bin else None

    @property
    def components(self) -> list[Component]:
        if self.options.kubernetes:
            return kl.components(self.spec, jaeger=self.jaeger is not None)
        return cmd.components(self.spec, jaeger=self.jaeger is not None)

    def _exists(self) -> bool:
        if self.options.kubernetes:
            return f"{self.options.prefix}-br" in list_links()
        return network_exists(self.spec)

    # -- up -------------------------------------------------------------------------------------

    def up(self, ready_timeout_s: float = 30.0) -> UpReport:
        require_net_admin("up")
        report = UpReport(jaeger=self.jaeger is not None)
        if load_options(self.layout) is not None and self._exists():
            dead = [c for c in self.components if not self.sup.running(c.name)]
            if self.options.kubernetes and any(c.kind == "kube" for c in dead):
                # A new API server has new ports: everything that talks to it starts again.
                names = [c.name for c in self.components]
                dead = self.components[min(names.index(c.name) for c in dead) :]
                for c in dead:
                    self.sup.stop(c.name)
            report.already_running = True
            if not dead:
                report.not_ready = self.not_ready()
                return report
            for c in dead:
                self.say(f"meshward up: restarting {c.name}")
                self.start_component(c)
                report.started.append(c.name)
        else:
            self._refuse_foreign_mesh()
            self._teardown()  # leftovers of a crashed run from this state dir, if any
            try:
                self._build(report)
            except BaseException:
                self._teardown()
                raise
        wait_until(lambda: not self.not_ready(), ready_timeout_s, 0.25)
        report.not_ready = self.not_ready()
        return report

    def _refuse_foreign_mesh(self) -> None:
        """Leftovers are ours to remove only if this state dir started them (`up` saves its
        options before it builds anything); a bridge with our prefix and no saved state here
        belongs to a mesh started from another state dir."""
        bridge = f"{self.options.prefix}-br"
        if load_options(self.layout) is None and bridge in list_links():
            raise ConfigError(
                f"meshward up: {bridge} exists but {self.layout.root} holds no mesh: another mesh "
                f"uses prefix {self.options.prefix!r} (give --prefix/--subnet, or `meshward down "
                f"--prefix {self.options.prefix}` removes it)"
            )

    def _build(self, report: UpReport) -> None:
        self.layout.make()
        save_options(self.layout, self.options)
        self.say(f"meshward up: pods {', '.join(p.name for p in self.spec.pods)}")
        if self.options.kubernetes:
            kl.prepare(self.spec, self.layout)
        else:
            self.layout.registry.write_text(registry_yaml(self.spec))
            build_network(self.spec)
        for c in self.components:
            self.start_component(c)
            report.started.append(c.name)
        if self.options.kubernetes:
            self.say("meshward up: the demo's Pods and the ingress, through the API")
            kl.apply_demo(self.spec, self.layout, self.jaeger)

    def start_component(self, c: Component) -> None:
        spec, layout = self.spec, self.layout
        if c.kind == "jaeger":
            self._start_jaeger(c)
        elif c.kind == "kube":
            self.sup.start(c.name, ks.cluster_argv(layout))
            self._wait(c, lambda: kl.cluster_ready(layout), KUBE_START_TIMEOUT_S)
            self.say("meshward up: the API server is up; applying `meshward manifest generate`")
            kl.install(spec, layout, self.jaeger)
        elif c.kind == "control-plane" and self.options.kubernetes:
            self.sup.start(c.name, ks.control_plane_argv(spec, layout))
            self._wait(c, lambda: kl.control_plane_ready(spec), KUBE_START_TIMEOUT_S)
        elif c.kind == "node":
            Path(ks.node_root(layout, c.node)).mkdir(parents=True, exist_ok=True)
            self.sup.start(c.name, ks.node_runner_argv(spec, layout, c.node))
        elif c.kind == "control-plane":
            self.sup.start(c.name, cmd.control_plane_argv(spec, layout))
            bundle = file_present(Path(cmd.trust_bundle(layout)))
            self._wait(
                c, lambda: bundle() and tcp_open("127.0.0.1", spec.options.control_plane_port)
            )
        elif c.kind == "agent":
            self._mint_join_token(c.node)
            socket = layout.agent_socket(c.node)
            socket.unlink(missing_ok=True)
            layout.agent_dir(c.node).mkdir(parents=True, exist_ok=True)
            self.sup.start(c.name, cmd.agent_argv(spec, layout, c.node))
            self._wait(c, file_present(socket))
        elif c.kind == "sidecar":
            self.sup.start(c.name, cmd.sidecar_argv(spec, layout, c.pod, self.jaeger))
        elif c.kind == "app":
            self.sup.start(c.name, cmd.app_argv(spec, c.pod))
        else:
            self.sup.start(c.name, cmd.ingress_argv(spec, layout, self.jaeger))

    def _start_jaeger(self, c: Component) -> None:
        binary, jaeger = self._jaeger_bin, self.jaeger
        if binary is None or jaeger is None:
            return
        config = self.layout.root / "jaeger.yaml"
        config.write_text(cmd.jaeger_config(self.spec, jaeger))
        self.sup.start(c.name, jaeger_argv(binary, str(config)))
        self._wait(c, lambda: tcp_open(self.spec.bridge_ip, jaeger.otlp_http))

    def _wait(
        self, c: Component, check: Callable[[], bool], timeout_s: float = STEP_TIMEOUT_S
    ) -> None:
        ok = wait_until(lambda: check() or not self.sup.running(c.name), timeout_s)
        if not ok or not self.sup.running(c.name):
            raise NotReady(
                f"meshward up: {c.name} did not start (see `meshward logs {c.name}`: "
                f"{self.layout.log(c.name)})"
            )

    def _mint_join_token(self, node: str) -> None:
        Path(cmd.join_token_file(self.layout, node)).parent.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            cmd.join_token_argv(self.layout, node),
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            raise NotReady(
                f"meshward up: could not mint a join token for {node}: {done.stderr.strip()}"
            )

    # -- readiness ------------------------------------------------------------------------------

    def not_ready(self) -> list[str]:
        """One line per part of the mesh that is not serving, saying what is wrong."""
        problems = [
            f"{c.name}: not running (see `meshward logs {c.name}`)"
            for c in self.components
            if not self.sup.running(c.name)
        ]
        if self.options.kubernetes:
            return problems or self._kube_not_ready()
        for pod in self.spec.pods:
            url = f"http://{pod.ip}:{ports.HEALTH}/healthz/ready"
            if self.sup.running(f"sidecar-{pod.name}") and http_status(url, 1.0) != 200:
                problems.append(f"sidecar-{pod.name}: not ready ({url})")
            if self.sup.running(f"app-{pod.name}") and not self._app_answers(pod.netns):
                problems.append(f"app-{pod.name}: not answering on :{APP_PORT}")
        if self.sup.running("ingress") and not problems:
            url = f"http://127.0.0.1:{self.options.ingress_port}/productpage"
            status = http_status(url, 5.0)
            if status != 200:
                problems.append(f"ingress: {url} answered {status or 'nothing'}")
        return problems

    def _kube_not_ready(self) -> list[str]:
        problems = kl.pods_not_ready(self.spec, self.layout)
        if not problems:
            url = f"http://127.0.0.1:{self.options.ingress_port}/productpage"
            status = http_status(url, 5.0)
            if status != 200:
                problems.append(f"ingress: {url} answered {status or 'nothing'}")
        return problems

    @staticmethod
    def _app_answers(netns: str) -> bool:
        # Inside the pod, loopback is not intercepted: this reaches the app, not the sidecar.
        probe = ["ip", "netns", "exec", netns, "curl", "-s", "-o", "/dev/null", "-m", "1"]
        probe += ["-w", "%{http_code}", f"http://127.0.0.1:{APP_PORT}/healthz"]
        done = subprocess.run(probe, capture_output=True, text=True, timeout=5, check=False)
        return done.stdout.strip() == "200"

    # -- down -----------------------------------------------------------------------------------

    def down(self) -> list[str]:
        """Remove everything; returns what is left (empty when the teardown is complete)."""
        require_net_admin("down")
        left = self._teardown()
        return self.leftovers() + left

    def _teardown(self) -> list[str]:
        for record in reversed(self.sup.records()):
            # A node runner stops its pods first (processes, namespaces, cgroups).
            grace = NODE_STOP_GRACE_S if record.name.startswith("node-") else 3.0
            self.sup.stop(record.name, grace_s=grace)
        kill_pids(self._strays())
        left = kl.teardown(self.layout)  # what a crashed node runner left, if any
        remove_network(self.options.prefix)
        for path in (self.layout.run_dir, self.layout.ca_dir, self.layout.policies):
            shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(self.layout.root / "agents", ignore_errors=True)
        for name in ("mesh.json", "registry.yaml", "jaeger.yaml"):
            (self.layout.root / name).unlink(missing_ok=True)
        return left

    def _strays(self) -> list[int]:
        """Processes started from this state dir that have no record (a crash between start and
        record), excluding our own ancestors (`sudo meshward down --state-dir ...`)."""
        ancestors = _ancestors()
        marker = str(self.layout.root).rstrip("/") + "/"
        return [p for p in pids_mentioning(marker) if p not in ancestors]

    def leftovers(self) -> list[str]:
        found = leftovers(self.options.prefix)
        found += [f"process {pid}" for pid in self._strays()]
        found += [
            f"file {p}" for p in (self.layout.run_dir, self.layout.options_file) if p.exists()
        ]
        return found


def _ancestors() -> set[int]:
    out: set[int] = set()
    pid = os.getpid()
    while pid > 1 and pid not in out:
        out.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat[stat.rindex(")") + 2 :].split()[1])
    return out
