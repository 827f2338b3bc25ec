"""Test harness for pods: a pod network that is always torn down, even when the test fails.

    from tests.harness.pods import pod_network, add_intercepted_pod, wait_for_tcp

    with pod_network("mwsc", "10.213.16.0/24") as net:
        client = net.add_pod("client")
        server = add_intercepted_pod(net, "server")      # istio-init rules applied
        net.set_hosts({"server": [server.ip]})
        proc = net.spawn(server, [sys.executable, "-m", "..."], uid=1337)
        wait_for_tcp(server.ip, 15006, proc=proc)

or as a fixture: `pod_network_fixture(prefix, subnet)` returns a pytest fixture function.
Each engineer uses their own prefix and subnet (see their task); leftovers of a crashed run with the
same prefix are removed before the network is made.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from meshward.pods import Pod, PodNetwork
from sidecar_tls.interception.iptables import InterceptionOptions, apply_rules

REPO = Path(__file__).resolve().parents[2]

__all__ = [
    "Pod",
    "PodNetwork",
    "add_intercepted_pod",
    "pod_network",
    "pod_network_fixture",
    "require_root",
    "spawn_sidecar",
    "wait_for_tcp",
]


def require_root() -> None:
    """Fail (not skip: the house has no skips) with a clear line when not root."""
    if os.geteuid() != 0:
        pytest.fail("netns tests need root (CI runs them as root)")


@contextmanager
def pod_network(prefix: str, subnet: str) -> Iterator[PodNetwork]:
    """A created PodNetwork, destroyed on exit whatever happens (stale same-prefix leftovers of a
    crashed run are removed first)."""
    require_root()
    PodNetwork.cleanup_prefix(prefix)
    net = PodNetwork(prefix, subnet)
    try:
        net.create()
        yield net
    finally:
        net.destroy()


def pod_network_fixture(prefix: str, subnet: str) -> Callable[[], Iterator[PodNetwork]]:
    """A function-scoped pytest fixture yielding `pod_network(prefix, subnet)`:
    `net = pod_network_fixture("mwsc", "10.213.16.0/24")` at module level, then use `net`."""

    @pytest.fixture
    def _fixture() -> Iterator[PodNetwork]:
        with pod_network(prefix, subnet) as net:
            yield net

    return _fixture


def add_intercepted_pod(
    net: PodNetwork,
    name: str,
    ip: str | None = None,
    options: InterceptionOptions | None = None,
) -> Pod:
    """A pod with istio-init's nat rules applied, as before the app and sidecar start."""
    pod = net.add_pod(name, ip=ip)
    apply_rules(pod.netns, options or InterceptionOptions())
    return pod


def wait_for_tcp(
    host: str,
    port: int,
    *,
    timeout: float = 15.0,
    proc: subprocess.Popen[Any] | None = None,
    net: PodNetwork | None = None,
    pod: Pod | None = None,
) -> None:
    """Wait until host:port accepts a TCP connection; fail early if `proc` exits.

    From the host by default; with `net` and `pod`, the probe runs inside the pod (for listeners
    bound to the pod's loopback). Note that a probe from inside an intercepted pod as root is
    itself redirected, so probe such pods from the host or as the proxy uid."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"process {proc.args!r} exited with {proc.returncode} before {host}:{port}")
        if net is not None and pod is not None:
            probe = (
                "import socket,sys;"
                f"s=socket.create_connection(({host!r},{port}),timeout=1);s.close()"
            )
            done = net.run(pod, [sys.executable, "-c", probe], timeout=5)
            if done.returncode == 0:
                return
            last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
        else:
            try:
                with socket.create_connection((host, port), timeout=1):
                    return
            except OSError as exc:
                last = str(exc)
        time.sleep(0.1)
    pytest.fail(f"nothing accepted on {host}:{port} within {timeout}s ({last})")


def spawn_sidecar(
    net: PodNetwork,
    pod: Pod,
    *,
    agent_socket: str,
    workload: str,
    namespace: str,
    log_path: Path,
    extra_args: Sequence[str] = (),
    timeout: float = 30.0,
) -> subprocess.Popen[bytes]:
    """`meshward sidecar run` in the pod as uid 1337, waited for until /healthz/ready says 200."""
    argv = [
        sys.executable, "-m", "meshward", "sidecar", "run",
        "--agent-socket", agent_socket,
        "--pod-ip", pod.ip,
        "--workload", workload,
        "--namespace", namespace,
        *extra_args,
    ]  # fmt: skip
    with log_path.open("ab") as log:
        proc = net.spawn(pod, argv, uid=1337, stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"sidecar {workload} exited:\n{log_path.read_text(errors='replace')}")
        try:
            url = f"http://{pod.ip}:15021/healthz/ready"
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return proc
        except OSError:
            pass
        time.sleep(0.1)
    pytest.fail(
        f"sidecar {workload} not ready in {timeout}s:\n{log_path.read_text(errors='replace')}"
    )
