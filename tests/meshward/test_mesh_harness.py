"""A real local mesh for tests, driven through the `meshward` CLI exactly as a user would.

Prefix `mwup`, subnet 10.213.96.0/24, free ports and its own state dir, so it never collides with
the real `make up` mesh (`mw`, 10.213.0.0/24). No tests here: the test_mesh_* modules use it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshward.mesh.network import leftovers
from meshward.mesh.supervisor import Supervisor, pids_mentioning
from meshward.pods import PodNetwork

PREFIX = "mwup"
SUBNET = "10.213.96.0/24"
REPO = Path(__file__).resolve().parents[2]


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("the local mesh tests need root (CI runs as root)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def meshward_argv(*args: str) -> list[str]:
    """`meshward <args>` as the README runs it."""
    return [sys.executable, "-m", "meshward", *args]


class LocalMesh:
    def __init__(self, state_dir: Path, jaeger: str | None, kubernetes: bool = False) -> None:
        self.state_dir = state_dir
        self.jaeger = jaeger
        self.kubernetes = kubernetes
        self.ingress_port = free_port()
        self.control_plane_port = free_port()
        self.webhook_port = free_port()
        self.jaeger_ports = (free_port(), free_port(), free_port())
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        # The README's root shell has the venv on PATH (`source .venv/bin/activate`): `python`
        # in a `meshward exec` command is the venv's.
        venv_bin = str(Path(sys.executable).parent)
        self.env["PATH"] = f"{venv_bin}:{self.env.get('PATH', '')}"
        if jaeger:
            self.env["MESHWARD_JAEGER"] = jaeger
        self.sup = Supervisor(state_dir / "run", state_dir / "logs")

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """`meshward <command> --state-dir <ours> <rest>` (`traces` reads Jaeger, not the state)."""
        state = [] if args[0] == "traces" else ["--state-dir", str(self.state_dir)]
        depth = 2 if args[0] == "proxy-config" else 1  # a group: the option goes on `secret`
        argv = meshward_argv(*args[:depth], *state, *args[depth:])
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
            cwd=REPO,
            check=False,
        )

    def up_args(self) -> list[str]:
        otlp, query, query_grpc = self.jaeger_ports
        args = [
            "up",
            "--prefix", PREFIX,
            "--subnet", SUBNET,
            "--ingress-port", str(self.ingress_port),
            "--control-plane-port", str(self.control_plane_port),
            "--jaeger-otlp-port", str(otlp),
            "--jaeger-query-port", str(query),
            "--jaeger-query-grpc-port", str(query_grpc),
            "--workload-ttl", "10m",
        ]  # fmt: skip
        if self.kubernetes:
            args += ["--kubernetes", "--webhook-port", str(self.webhook_port)]
        return [*args, "--jaeger" if self.jaeger else "--no-jaeger"]

    def make(self, action: str, *args: str) -> subprocess.CompletedProcess[str]:
        """What `make up` / `make down` run (scripts/mesh_up.sh)."""
        argv = ["bash", str(REPO / "scripts" / "mesh_up.sh"), action]
        argv += ["--state-dir", str(self.state_dir), *args]
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=600, env=self.env, cwd=REPO, check=False
        )

    def make_up(self) -> subprocess.CompletedProcess[str]:
        done = self.make("up", *self.up_args()[1:])
        assert done.returncode == 0, f"make up failed:\n{done.stdout}\n{done.stderr}\n{self.logs()}"
        return done

    def make_down(self) -> subprocess.CompletedProcess[str]:
        return self.make("down", "--prefix", PREFIX, "--subnet", SUBNET)

    def up(self) -> subprocess.CompletedProcess[str]:
        done = self.cli(*self.up_args())
        assert done.returncode == 0, (
            f"meshward up failed:\n{done.stdout}\n{done.stderr}\n{self.logs()}"
        )
        return done

    def down(self) -> subprocess.CompletedProcess[str]:
        return self.cli("down", "--prefix", PREFIX, "--subnet", SUBNET)

    @property
    def query_url(self) -> str:
        return f"http://127.0.0.1:{self.jaeger_ports[1]}"

    def ingress(self, path: str = "/productpage") -> tuple[int, Any]:
        url = f"http://127.0.0.1:{self.ingress_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")
        except OSError as exc:
            return 0, str(exc)

    def exec_curl(self, pod: str, url: str) -> tuple[int, str]:
        """`meshward exec <pod> -- curl -s -w '\\n%{http_code}' <url>`: (status, body)."""
        done = self.cli("exec", pod, "--", "curl", "-s", "-m", "10", "-w", "\n%{http_code}", url)
        body, _, code = done.stdout.rpartition("\n")
        return (int(code) if code.isdigit() else 0), body

    def rpc(self, pod: str, *args: str) -> tuple[int, str]:
        """`meshward exec POD -- python -m meshward.demo.rpc ARGS`: (exit status, the reply's JSON,
        or the last line on stderr - the call's status - when it failed)."""
        done = self.cli("exec", pod, "--", "python", "-m", "meshward.demo.rpc", *args)
        if done.returncode == 0:
            return 0, done.stdout
        lines = done.stderr.strip().splitlines()
        return done.returncode, lines[-1] if lines else done.stdout

    def poll_rpc(self, pod: str, want: int, *args: str, wait_s: float) -> tuple[float, str]:
        """`rpc` until it exits `want` (a policy on its way) or `wait_s` is up."""
        start = time.monotonic()
        while True:
            status, out = self.rpc(pod, *args)
            elapsed = time.monotonic() - start
            if status == want or elapsed > wait_s:
                return elapsed, out
            time.sleep(0.2)

    def requests_total(self, pod: str, **labels: str) -> float:
        """`istio_requests_total` of POD's sidecar matching LABELS, read as the README does
        (`meshward exec POD -- curl -s localhost:15090/stats/prometheus`)."""
        url = "localhost:15090/stats/prometheus"
        done = self.cli("exec", pod, "--", "curl", "-s", "-m", "10", url)
        assert done.returncode == 0, done.stderr
        return sum(
            s.value
            for f in text_string_to_metric_families(done.stdout)
            for s in f.samples
            if s.name == "istio_requests_total" and labels.items() <= s.labels.items()
        )

    def kill(self, component: str) -> None:
        """SIGKILL, as a crash: the record stays, so the mesh can tell it is gone."""
        self.sup.kill(component)
        assert not self.sup.running(component)

    def logs(self) -> str:
        out = []
        logs = [
            *(self.state_dir / "logs").glob("*.log"),
            *(self.state_dir / "nodes").glob("*/logs/*.log"),
        ]
        for log in sorted(logs):
            out.append(
                f"==> {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            )
        return "\n".join(out)

    def kubectl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The cluster's kubectl with the mesh's admin kubeconfig (`up --kubernetes`)."""
        from meshward.kube.cluster import kube_bin_dir

        kubeconfig = self.state_dir / "kube" / "admin.kubeconfig"
        argv = [str(kube_bin_dir() / "kubectl"), "--kubeconfig", str(kubeconfig), *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)

    def leftovers(self) -> list[str]:
        found = leftovers(PREFIX)
        found += [f"process {p}" for p in pids_mentioning(str(self.state_dir) + "/")]
        found += [
            f"file {p}"
            for p in (self.state_dir / "run", self.state_dir / "mesh.json")
            if p.exists()
        ]
        return found


@contextlib.contextmanager
def local_mesh(*, jaeger: bool, kubernetes: bool = False) -> Iterator[LocalMesh]:
    require_root()
    binary = None
    if jaeger:
        from meshward.jaeger import ensure_jaeger

        binary = ensure_jaeger()
    # Not under pytest's tmp_path: that is 0700, and the sidecars (uid 1337) must reach the
    # agents' sockets in the state dir.
    state_dir = Path(tempfile.mkdtemp(prefix="mwup-state-", dir="/tmp"))
    state_dir.chmod(0o755)
    mesh = LocalMesh(state_dir, binary, kubernetes)
    try:
        yield mesh
    finally:
        mesh.down()
        PodNetwork.cleanup_prefix(PREFIX)  # belt and braces, should down itself fail
        shutil.rmtree(state_dir, ignore_errors=True)


class SteadyTraffic:
    """Requests to the ingress in a loop on a thread; counts each hop's status per service."""

    def __init__(self, mesh: LocalMesh) -> None:
        self.mesh = mesh
        self.hops: Counter[tuple[str, str]] = Counter()
        self.pages: Counter[int] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            status, body = self.mesh.ingress()
            self.pages[status] += 1
            if status == 200 and isinstance(body, dict):
                for hop in body["hops"]:
                    self.hops[(hop["service"], hop["status"])] += 1
            time.sleep(0.05)

    def __enter__(self) -> SteadyTraffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def reset(self) -> None:
        self.hops.clear()
        self.pages.clear()

    def wait_for_requests(self, n: int, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while sum(self.pages.values()) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sum(self.pages.values()) >= n, f"traffic stalled: {self.pages}"
