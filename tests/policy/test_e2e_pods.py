"""End to end in pods: policy files in the control plane's directory reach the sidecars live.

One mesh for the module: control plane (watching a policy directory), one node agent, and two
intercepted pods with sidecars: `client` (default/sleep) calls `httpbin` (foo/httpbin) over mTLS
with curl; the test process calls httpbin in plaintext from the host over the bridge. Netns and
links are prefixed `mwpo`, subnet 10.213.80.0/24; everything is torn down on exit.
"""

from __future__ import annotations

import http.client
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.harness.control_plane import ControlPlane, run_control_plane
from tests.harness.node_agent import NodeAgent, run_node_agent
from tests.harness.pods import (
    Pod,
    PodNetwork,
    add_intercepted_pod,
    pod_network,
    spawn_sidecar,
    wait_for_tcp,
)

pytestmark = pytest.mark.netns

PREFIX, SUBNET = "mwpo", "10.213.80.0/24"
CLIENT_IP, SERVER_IP = "10.213.80.10", "10.213.80.11"
APP_PORT, APP_UID = 8000, 1000
PROPAGATION_DEADLINE_S = 2.0  # the promise: changes reach every sidecar within 2 seconds

REGISTRY = f"""\
trustDomain: cluster.local
workloads:
  - name: client
    namespace: default
    serviceAccount: sleep
    node: node-1
    labels: {{app: sleep}}
    address: {CLIENT_IP}
    selector: {{netns: {PREFIX}-client}}
  - name: httpbin
    namespace: foo
    serviceAccount: httpbin
    node: node-1
    labels: {{app: httpbin}}
    address: {SERVER_IP}
    service: httpbin
    ports: [{APP_PORT}]
    selector: {{netns: {PREFIX}-httpbin}}
"""

# A tiny app: 200 "hello from httpbin" for any GET.
APP = f"""
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"hello from httpbin\\n"
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("0.0.0.0", {APP_PORT}), H).serve_forever()
"""

DENY_SLEEP = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-sleep
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  action: DENY
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/sleep"]
    to:
    - operation:
        methods: ["GET"]
"""
BROKEN = DENY_SLEEP.replace("action: DENY", "action: DENY\n  unknownField: true")


def _peer_auth(mode: str) -> str:
    return f"apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: default\n  namespace: foo\nspec:\n  mtls:\n    mode: {mode}\n"


@dataclass
class Mesh:
    net: PodNetwork
    client: Pod
    server: Pod
    control_plane: ControlPlane
    agent: NodeAgent
    policy_dir: Path
    logs: Path

    def tail(self) -> str:
        logs = [*sorted(self.logs.glob("sidecar-*.log")), self.control_plane.log_path]
        return "\n".join(f"==== {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs)

    def write_policy(self, name: str, text: str) -> float:
        """Replace a policy file atomically; returns when it was written (monotonic)."""
        tmp = self.policy_dir / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.policy_dir / name)
        return time.monotonic()

    def remove_policies(self) -> float:
        for f in self.policy_dir.iterdir():
            f.unlink()
        return time.monotonic()

    def mtls_get(self) -> tuple[str, str]:
        """GET http://httpbin:8000/ from the client pod's app uid: (status, body)."""
        done = self.net.run(
            self.client,
            [
                "curl",
                "-sS",
                "--max-time",
                "3",
                "-w",
                "\n%{http_code}",
                f"http://httpbin:{APP_PORT}/",
            ],
            uid=APP_UID,
            timeout=10,
        )
        body, _, status = done.stdout.rpartition("\n")
        return status.strip() or f"curl exit {done.returncode}: {done.stderr.strip()}", body

    def tcp_exchange(self) -> str:
        """Raw non-HTTP bytes from the client pod's app uid (so the sidecars carry them as TCP
        over mTLS): what came back, or "closed" if the connection ended without a byte."""
        script = "\n".join(
            [
                "import socket",
                f"s = socket.create_connection(('httpbin', {APP_PORT}), timeout=3)",
                "try:",
                "    s.sendall(b'ping\\r\\n\\r\\n'); d = s.recv(64)",
                "except (ConnectionResetError, BrokenPipeError):",
                "    d = b''",
                "print(d.decode(errors='replace') or 'closed')",
            ]
        )
        done = self.net.run(self.client, [sys.executable, "-c", script], uid=APP_UID, timeout=10)
        if done.returncode != 0:
            return f"error: {done.stderr.strip().splitlines()[-1:]}"
        return done.stdout.strip()

    def plaintext_get(self) -> str:
        """GET from the host without TLS: the status, or how the connection failed."""
        conn = http.client.HTTPConnection(SERVER_IP, APP_PORT, timeout=3)
        try:
            conn.request("GET", "/")
            return str(conn.getresponse().status)
        except (OSError, http.client.HTTPException) as exc:
            return f"refused ({type(exc).__name__})"
        finally:
            conn.close()


class _LogTail:
    """Where failure messages get the sidecar and control-plane logs from."""

    mesh: Mesh | None = None

    def tail(self) -> str:
        return self.mesh.tail() if self.mesh else ""


_LOGS = _LogTail()


def _wait_for(
    probe: Callable[[], str],
    want: Callable[[str], bool],
    since: float,
    deadline_s: float,
    what: str,
) -> float:
    """Poll until `want(probe())`; fail after `deadline_s` from `since`. Returns the delay."""
    last = ""
    while True:
        last = probe()
        if want(last):
            return time.monotonic() - since
        if time.monotonic() - since > deadline_s:
            pytest.fail(f"{what}: still {last!r} {deadline_s}s after the change\n{_LOGS.tail()}")
        time.sleep(0.05)


def _sidecar(agent: NodeAgent, workload: str, namespace: str, logs: Path) -> dict[str, Any]:
    return {
        "agent_socket": str(agent.socket_path),
        "workload": workload,
        "namespace": namespace,
        "log_path": logs / f"sidecar-{workload}.log",
    }


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("e2e")
    policy_dir = tmp / "policies"
    policy_dir.mkdir()
    with (
        pod_network(PREFIX, SUBNET) as net,
        run_control_plane(tmp, REGISTRY, policy_dir=policy_dir) as cp,
        run_node_agent(tmp, cp, "node-1") as agent,
    ):
        client = add_intercepted_pod(net, "client", ip=CLIENT_IP)
        server = add_intercepted_pod(net, "httpbin", ip=SERVER_IP)
        net.set_hosts({"httpbin": [SERVER_IP], "client": [CLIENT_IP]})
        app = net.spawn(server, [sys.executable, "-c", APP], uid=APP_UID, stdout=None, stderr=None)
        wait_for_tcp(SERVER_IP, APP_PORT, proc=app, net=net, pod=server)
        spawn_sidecar(net, server, **_sidecar(agent, "httpbin", "foo", tmp))
        spawn_sidecar(net, client, **_sidecar(agent, "client", "default", tmp))
        m = Mesh(net, client, server, cp, agent, policy_dir, tmp)
        _LOGS.mesh = m
        yield m


@pytest.fixture
def clean(mesh: Mesh) -> Iterator[Mesh]:
    """Each test starts from an empty policy directory with mTLS traffic flowing."""
    since = mesh.remove_policies()
    _wait_for(lambda: mesh.mtls_get()[0], lambda s: s == "200", since, 15, "baseline mTLS GET")
    yield mesh
    mesh.remove_policies()


def test_live_policy_change_turns_200_into_403_and_back(clean: Mesh) -> None:
    mesh = clean
    assert mesh.mtls_get() == ("200", "hello from httpbin\n")
    since = mesh.write_policy("deny-sleep.yaml", DENY_SLEEP)
    to_deny = _wait_for(
        lambda: mesh.mtls_get()[0],
        lambda s: s == "403",
        since,
        PROPAGATION_DEADLINE_S,
        "DENY policy",
    )
    assert mesh.mtls_get() == ("403", "RBAC: access denied")
    since = mesh.remove_policies()
    to_allow = _wait_for(
        lambda: mesh.mtls_get()[0],
        lambda s: s == "200",
        since,
        PROPAGATION_DEADLINE_S,
        "DENY removed",
    )
    print(f"policy propagation: 200->403 in {to_deny:.2f}s, 403->200 in {to_allow:.2f}s")


def test_broken_policy_file_changes_nothing(clean: Mesh) -> None:
    mesh = clean
    since = mesh.write_policy("deny-sleep.yaml", DENY_SLEEP)
    _wait_for(
        lambda: mesh.mtls_get()[0],
        lambda s: s == "403",
        since,
        PROPAGATION_DEADLINE_S,
        "DENY policy",
    )
    # Break the file in force, and add a broken new one: the last good set stays in force.
    mesh.write_policy("deny-sleep.yaml", BROKEN)
    mesh.write_policy("new.yaml", BROKEN.replace("deny-sleep", "allow-all"))
    time.sleep(PROPAGATION_DEADLINE_S + 0.5)  # longer than a good change takes to arrive
    assert mesh.mtls_get() == ("403", "RBAC: access denied")
    log = mesh.control_plane.log()
    assert "policy refused, keeping the last good version" in log
    assert f"{mesh.policy_dir / 'deny-sleep.yaml'}:" in log
    assert "unknownField: unknown field" in log
    # `meshward authz lint` reports the same file and line.
    from click.testing import CliRunner

    from meshward.cli import main

    lint = CliRunner().invoke(main, ["authz", "lint", str(mesh.policy_dir)])
    assert lint.exit_code == 1
    assert (
        f"{mesh.policy_dir / 'deny-sleep.yaml'}:11: spec.unknownField: unknown field" in lint.output
    )
    # Fixing the file is picked up again.
    since = mesh.write_policy(
        "deny-sleep.yaml", DENY_SLEEP.replace('methods: ["GET"]', 'methods: ["POST"]')
    )
    _wait_for(
        lambda: mesh.mtls_get()[0],
        lambda s: s == "200",
        since,
        PROPAGATION_DEADLINE_S,
        "fixed policy",
    )


def test_strict_peer_authentication_refuses_plaintext_that_permissive_accepted(clean: Mesh) -> None:
    mesh = clean
    since = mesh.write_policy("peer-auth.yaml", _peer_auth("PERMISSIVE"))
    _wait_for(
        mesh.plaintext_get,
        lambda s: s == "200",
        since,
        PROPAGATION_DEADLINE_S,
        "PERMISSIVE plaintext",
    )
    assert mesh.mtls_get()[0] == "200"  # mTLS is accepted in PERMISSIVE too
    since = mesh.write_policy("peer-auth.yaml", _peer_auth("STRICT"))
    _wait_for(
        mesh.plaintext_get,
        lambda s: s.startswith("refused"),
        since,
        PROPAGATION_DEADLINE_S,
        "STRICT plaintext",
    )
    assert mesh.plaintext_get().startswith("refused")
    assert mesh.mtls_get()[0] == "200"


DENY_SLEEP_TCP = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-sleep-tcp
  namespace: foo
spec:
  action: DENY
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/sleep"]
    to:
    - operation:
        ports: ["8000"]
"""


def test_tcp_connection_is_closed_on_deny(clean: Mesh) -> None:
    mesh = clean
    # The app answers bytes that are not HTTP/1.x with an HTML error page: they went through.
    assert mesh.tcp_exchange().startswith("<!DOCTYPE HTML>")
    since = mesh.write_policy("deny-sleep-tcp.yaml", DENY_SLEEP_TCP)
    _wait_for(mesh.tcp_exchange, "closed".__eq__, since, PROPAGATION_DEADLINE_S, "TCP DENY")
    assert mesh.mtls_get()[0] == "403"  # the same rule denies HTTP too (ports apply to both)
