"""The mesh end to end in real network namespaces with istio-init's iptables rules: a real control
plane, a real node agent (Workload API), sidecars as uid 1337 in their pods, plain apps as uid 1000.

One mesh per module (starting it costs seconds); every test asserts its own behaviour on it.
Workload certificates live a few seconds, so the sidecars rotate throughout the module.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from meshward.pods import Pod, PodNetwork
from tests.harness.control_plane import ControlPlane, run_control_plane
from tests.harness.ingress import run_ingress
from tests.harness.node_agent import NodeAgent, run_node_agent
from tests.harness.pods import add_intercepted_pod, pod_network, spawn_sidecar
from tests.sidecar_tls.testca import MiniCA

pytestmark = [pytest.mark.netns, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
PREFIX, SUBNET = "mwsc", "10.213.16.0/24"
HOST_IP = "10.213.16.1"
CLIENT_IP, SERVER_IP, IMPOSTOR_IP = "10.213.16.10", "10.213.16.11", "10.213.16.12"
TD = "cluster.local"
CLIENT_ID = f"spiffe://{TD}/ns/default/sa/client"
SERVER_ID = f"spiffe://{TD}/ns/default/sa/server"
WORKLOAD_TTL = "6s"

# "billing" owns the impostor pod's address in the registry, but the pod's sidecar is attested as
# "impostor" (by its netns): a server presenting the wrong identity for its address.
REGISTRY = f"""
workloads:
  - name: client
    namespace: default
    serviceAccount: client
    node: node-1
    labels: {{app: client}}
    address: {CLIENT_IP}
    service: client
    ports: [8080]
    selector: {{netns: {PREFIX}-client}}
  - name: server
    namespace: default
    serviceAccount: server
    node: node-1
    labels: {{app: server}}
    address: {SERVER_IP}
    service: server
    ports: [8080, 9000]
    selector: {{netns: {PREFIX}-server}}
  - name: billing
    namespace: default
    serviceAccount: billing
    node: node-1
    address: {IMPOSTOR_IP}
    service: billing
    ports: [8080]
    selector: {{netns: {PREFIX}-nowhere}}
  - name: impostor
    namespace: default
    serviceAccount: impostor
    node: node-1
    selector: {{netns: {PREFIX}-impostor}}
  - name: ingress
    namespace: istio-system
    serviceAccount: ingress
    node: node-1
    selector: {{netns: host, uids: [1337]}}
"""


@dataclass
class Mesh:
    net: PodNetwork
    cp: ControlPlane
    agent: NodeAgent
    pods: dict[str, Pod]
    logs: dict[str, Path]
    tmp: Path
    shared: Path  # readable by the pods' uids (pytest's tmp root is 0700)

    def run(self, pod: str, *args: str, uid: int = 1000, timeout: float = 30) -> dict:  # type: ignore[type-arg]
        done = subprocess.run(
            self.net.command(
                self.pods[pod], [PY, "-m", "tests.sidecar_tls.pod_apps", *args], uid=uid
            ),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]

    def certs(self, pod: str) -> dict:  # type: ignore[type-arg]
        probe = (
            "import urllib.request,sys;"
            "sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:15000/certs',timeout=5).read().decode())"
        )
        done = self.net.run(self.pods[pod], [PY, "-c", probe], uid=1337)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)["certificates"][0]  # type: ignore[no-any-return]

    def log(self, name: str) -> str:
        return self.logs[name].read_text(errors="replace")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("mesh")
    tmp.chmod(0o755)
    with (
        pod_network(PREFIX, SUBNET) as net,
        run_control_plane(tmp, REGISTRY, workload_ttl=WORKLOAD_TTL) as cp,
        run_node_agent(tmp, cp, workload_ttl=WORKLOAD_TTL) as agent,
    ):
        pods = {
            "client": add_intercepted_pod(net, "client", CLIENT_IP),
            "server": add_intercepted_pod(net, "server", SERVER_IP),
            "impostor": add_intercepted_pod(net, "impostor", IMPOSTOR_IP),
        }
        net.set_hosts({"client": [CLIENT_IP], "server": [SERVER_IP], "billing": [IMPOSTOR_IP]})
        logs: dict[str, Path] = {}
        app = [PY, "-m", "tests.sidecar_tls.pod_apps"]
        for pod, argv in (
            ("server", [*app, "http-server", "8080"]),
            ("server", [*app, "line-server", "9000"]),
            ("impostor", [*app, "http-server", "8080"]),
        ):
            net.spawn(pods[pod], argv, uid=1000, cwd=REPO)
        for name, pod in pods.items():
            logs[name] = tmp / f"sidecar-{name}.log"
            spawn_sidecar(
                net,
                pod,
                agent_socket=str(agent.socket_path),
                workload=name,
                namespace="default",
                log_path=logs[name],
            )
        shared = Path(tempfile.mkdtemp(prefix="mwsc-"))
        shared.chmod(0o755)
        try:
            yield Mesh(net, cp, agent, pods, logs, tmp, shared)
        finally:
            shutil.rmtree(shared, ignore_errors=True)


def test_http_goes_through_both_sidecars_over_mtls_with_the_callers_xfcc(mesh: Mesh) -> None:
    marker = "mwsc-plaintext-marker"
    pcap = mesh.tmp / "server.pcap"
    dump = subprocess.Popen(
        [
            "tcpdump",
            "--immediate-mode",
            "-i",
            mesh.pods["server"].veth_host,
            "-U",
            "-w",
            str(pcap),
            "tcp",
            "port",
            "8080",
        ],
        stderr=subprocess.PIPE,
    )
    try:
        assert dump.stderr is not None
        dump.stderr.readline()  # "listening on ...": capture is running
        forged = f"By=x;Hash=00;URI=spiffe://{TD}/ns/default/sa/admin"
        got = mesh.run(
            "client",
            "http-get",
            f"http://server:8080/{marker}",
            f"x-forwarded-client-cert={forged}",
        )
        time.sleep(0.5)
    finally:
        dump.terminate()
        dump.communicate(timeout=10)
    assert got["status"] == 200
    seen = json.loads(got["body"])
    assert seen["path"] == f"/{marker}"
    assert seen["peer"] == "127.0.0.6"  # delivered by the inbound sidecar
    (xfcc,) = seen["headers"]["x-forwarded-client-cert"]  # the forged one is gone
    fields = dict(part.split("=", 1) for part in xfcc.split(";"))
    assert fields["URI"] == CLIENT_ID
    assert fields["By"] == SERVER_ID
    assert len(fields["Hash"]) == 64
    wire = pcap.read_bytes()
    assert b"\x16\x03" in wire  # TLS handshake records on the wire
    assert marker.encode() not in wire  # ... and never the request itself


def test_line_protocol_tcp_goes_through_the_mesh(mesh: Mesh) -> None:
    got = mesh.run("client", "lines", "server", "9000", "hello", "second line")
    assert got == ["echo 127.0.0.6: hello", "echo 127.0.0.6: second line"]


def test_plaintext_client_to_strict_inbound_is_refused(mesh: Mesh) -> None:
    # From the host: no sidecar on the way, the server's PREROUTING sends it to 15006 (STRICT).
    done = subprocess.run(
        [PY, "-m", "tests.sidecar_tls.pod_apps", "plain-get", SERVER_IP, "8080"],
        cwd=REPO, capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    got = json.loads(done.stdout)
    assert not got["result"].startswith("HTTP/")
    assert "inbound refused" in mesh.log("server")


def test_uid_1337_bypasses_interception_and_other_uids_do_not(mesh: Mesh) -> None:
    # As the proxy uid the connection leaves the pod as is: plaintext, refused by STRICT.
    as_proxy = mesh.run("client", "plain-get", SERVER_IP, "8080", uid=1337)
    assert not as_proxy["result"].startswith("HTTP/")
    # As the app uid the same connection is redirected through the sidecar and succeeds.
    as_app = mesh.run("client", "plain-get", SERVER_IP, "8080", uid=1000)
    assert as_app["result"] == "HTTP/1.1 200 OK"


def test_excluded_inbound_port_is_not_redirected(mesh: Mesh) -> None:
    # 15021 is excluded from interception: the host reaches the health endpoint directly ...
    with urllib.request.urlopen(f"http://{SERVER_IP}:15021/healthz/ready", timeout=5) as resp:
        assert resp.status == 200
    # ... while the app port from the same host is captured by the STRICT inbound (see above).


def test_destination_outside_the_mesh_passes_through_with_allow_any(mesh: Mesh) -> None:
    with socket.socket() as probe:
        probe.bind((HOST_IP, 0))
        port = str(probe.getsockname()[1])
    server = subprocess.Popen(
        [PY, "-m", "tests.sidecar_tls.pod_apps", "http-server", port], cwd=REPO
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            got = mesh.run("client", "plain-get", HOST_IP, port)
            if got["result"].startswith("HTTP/") or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert got["result"] == "HTTP/1.1 200 OK"
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_server_with_the_wrong_identity_is_refused_by_the_outbound_side(mesh: Mesh) -> None:
    got = mesh.run("client", "http-get", "http://billing:8080/")
    assert got["status"] == 503
    assert "impostor" in got["body"]
    assert "expected spiffe://cluster.local/ns/default/sa/billing" in mesh.log("client")


def _mesh_ca(mesh: Mesh) -> MiniCA:
    state = mesh.cp.state_dir
    key = serialization.load_pem_private_key((state / "root-key.pem").read_bytes(), None)
    from cryptography import x509

    cert = x509.load_pem_x509_certificate((state / "root-cert.pem").read_bytes())
    return MiniCA(TD, key, cert)  # type: ignore[arg-type]


def _write_identity(mesh: Mesh, name: str, identity) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    cert = mesh.shared / f"{name}-cert.pem"
    key = mesh.shared / f"{name}-key.pem"
    cert.write_bytes(identity.leaf.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        identity.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key.chmod(0o644)  # test-only key, read by the probe running as uid 1337
    return str(cert), str(key)


def test_client_certificates_from_another_ca_or_expired_are_refused(mesh: Mesh) -> None:
    ca = _mesh_ca(mesh)
    bundle = str(shutil.copy(mesh.cp.bundle_path, mesh.shared / "bundle.pem"))
    Path(bundle).chmod(0o644)
    good = _write_identity(mesh, "good", ca.issue(CLIENT_ID))
    foreign = _write_identity(mesh, "foreign", MiniCA.create(TD, "foreign").issue(CLIENT_ID))
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    expired = _write_identity(
        mesh, "expired", ca.issue(CLIENT_ID, not_before=past, ttl=dt.timedelta(minutes=30))
    )
    # As uid 1337 the probe's own mTLS goes straight to the server's inbound.
    ok = mesh.run("client", "tls-get", SERVER_IP, "8080", *good, bundle, uid=1337)
    assert ok["result"] == "HTTP/1.1 200 OK"  # the control: a valid SVID of this CA is accepted
    for cert_key in (foreign, expired):
        got = mesh.run("client", "tls-get", SERVER_IP, "8080", *cert_key, bundle, uid=1337)
        assert not got["result"].startswith("HTTP/"), got
    log = mesh.log("server")
    assert log.count("inbound refused") >= 2
    assert "CERTIFICATE_VERIFY_FAILED" in log or "certificate" in log


def test_rotation_under_load_fails_no_request(mesh: Mesh) -> None:
    load = subprocess.Popen(
        mesh.net.command(
            mesh.pods["client"],
            [PY, "-m", "tests.sidecar_tls.pod_apps", "http-loop", "http://server:8080/", "12"],
            uid=1000,
        ),
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    client_serials, server_serials = set(), set()
    while load.poll() is None:
        client_serials.add(mesh.certs("client")["serial_number"])
        server_serials.add(mesh.certs("server")["serial_number"])
        time.sleep(0.5)
    out, _ = load.communicate(timeout=30)
    result = json.loads(out.strip().splitlines()[-1])
    assert result["failed"] == 0, result
    assert result["ok"] > 50
    assert len(client_serials) >= 3  # several rotations during the load
    assert len(server_serials) >= 3


def test_ingress_on_the_host_routes_plain_http_into_the_mesh_over_mtls(mesh: Mesh) -> None:
    with run_ingress(mesh.tmp, mesh.agent.socket_path, "server:8080") as ingress:
        deadline = time.monotonic() + 30
        status, body = 0, ""
        while time.monotonic() < deadline:
            try:
                url = f"http://127.0.0.1:{ingress.port}/productpage"
                with urllib.request.urlopen(url, timeout=5) as r:
                    status, body = r.status, r.read().decode()
                break
            except OSError:  # no SVID / mesh state yet (503)
                if not ingress.running:
                    pytest.fail(f"ingress exited:\n{ingress.log()}")
                time.sleep(0.3)
        log = ingress.log()
    assert status == 200, log
    seen = json.loads(body)
    assert seen["path"] == "/productpage"
    (xfcc,) = seen["headers"]["x-forwarded-client-cert"]
    assert xfcc.endswith(f"URI=spiffe://{TD}/ns/istio-system/sa/ingress")
