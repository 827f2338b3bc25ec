"""Two meshes with different trust domains on one machine, federated (SPIFFE bundle endpoints,
https_spiffe): three control planes (a.example, b.example, c.example), each with its node agent
and its pods in real network namespaces behind istio-init's rules. A pod of mesh A calls a pod of
mesh B over mTLS through both sidecars, found by an Istio ServiceEntry naming B's SPIFFE ID; B's
app sees A's SPIFFE ID in x-forwarded-client-cert; an AuthorizationPolicy in B naming A's
principal allows it, one naming another principal denies it (403). Mesh C knows B's service and
B's bundle, but B does not federate with C: C's call is refused at the handshake."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.harness.control_plane import ControlPlane, free_port, run_control_plane
from tests.harness.federation import bundle_endpoint_args, dev_certs, federation_config
from tests.harness.node_agent import NodeAgent, run_node_agent
from tests.harness.pods import PodNetwork, add_intercepted_pod, pod_network
from tests.sidecar_tls.test_tracing_pods import clean_env, get, wait_until

pytestmark = [pytest.mark.netns, pytest.mark.slow]

PREFIX, SUBNET = "mwfe", "10.213.208.0/24"
REPO = Path(__file__).resolve().parents[2]
APP_UID = 1000
TD = {"a": "a.example", "b": "b.example", "c": "c.example"}
SA = {"a": "x", "b": "ratings", "c": "x"}
RATINGS_ID = "spiffe://b.example/ns/default/sa/ratings"
HOST = "ratings.b.example"
URL = f"http://{HOST}:9080/ratings/1"

SERVICE_ENTRY = """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: ratings-b
  namespace: default
spec:
  hosts: [{host}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - number: 9080
    name: http
    protocol: HTTP
  endpoints:
  - address: {address}
  subjectAltNames: [{san}]
"""

ALLOW = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: ratings-callers
  namespace: default
spec:
  selector:
    matchLabels:
      app: ratings
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["{principal}"]
"""


def registry(net: PodNetwork, mesh: str) -> str:
    pod = net.pod(mesh)
    return f"""trustDomain: {TD[mesh]}
workloads:
  - name: {mesh}
    namespace: default
    serviceAccount: {SA[mesh]}
    node: node-{mesh}
    labels: {{app: {"ratings" if mesh == "b" else mesh}}}
    address: {pod.ip}
    ports: [9080]
    selector: {{netns: {pod.netns}, uids: [1337]}}
"""


def call(net: PodNetwork, mesh: str) -> dict[str, Any]:
    argv = [sys.executable, "-m", "tests.sidecar_tls.pod_apps", "http-get", URL]
    done = net.run(net.pod(mesh), argv, uid=APP_UID, env=clean_env())
    if done.returncode != 0:
        return {"status": -1, "body": done.stderr[-300:]}
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


@pytest.fixture(scope="module")
def meshes(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[PodNetwork, dict[str, ControlPlane], Path]]:
    tmp = tmp_path_factory.mktemp("federation-pods")
    certs = {m: dev_certs(tmp / f"certs-{m}", TD[m]) for m in TD}
    ports = {m: free_port() for m in TD}
    peers = {"a": "b", "b": "a", "c": "b"}  # B federates with A only, not with C
    policies, entries = tmp / "policies-b", tmp / "entries"
    policies.mkdir()
    entries.mkdir()
    with pod_network(PREFIX, SUBNET) as net, ExitStack() as stack:
        for mesh in TD:
            add_intercepted_pod(net, mesh)
        net.set_hosts({HOST: [net.pod("b").ip]})
        (entries / "ratings-b.yaml").write_text(
            SERVICE_ENTRY.format(host=HOST, address=net.pod("b").ip, san=RATINGS_ID)
        )
        (policies / "ratings.yaml").write_text(ALLOW.format(principal="a.example/ns/default/sa/x"))
        cps: dict[str, ControlPlane] = {}
        agents: dict[str, NodeAgent] = {}
        for mesh in TD:
            peer = peers[mesh]
            config = federation_config(
                tmp / f"federation-{mesh}.yaml", TD[peer], ports[peer],
                certs[peer] / "root-cert.pem",
            )  # fmt: skip
            extra = ["--config", str(config), "--workers", "1", *bundle_endpoint_args(ports[mesh])]
            if mesh != "b":
                extra += ["--service-entry-dir", str(entries)]
            cps[mesh] = stack.enter_context(
                run_control_plane(
                    tmp / f"cp-{mesh}", registry(net, mesh), trust_domain=TD[mesh],
                    plugin_ca_dir=certs[mesh], policy_dir=policies if mesh == "b" else None,
                    extra_args=tuple(extra),
                )
            )  # fmt: skip
        for mesh in TD:
            agents[mesh] = stack.enter_context(run_node_agent(tmp, cps[mesh], node=f"node-{mesh}"))
        for mesh in TD:
            pod = net.pod(mesh)
            argv = [
                sys.executable, "-m", "meshward", "sidecar", "run",
                "--agent-socket", str(agents[mesh].socket_path),
                "--pod-ip", pod.ip, "--workload", mesh, "--namespace", "default",
            ]  # fmt: skip
            with (tmp / f"sidecar-{mesh}.log").open("wb") as out:
                net.spawn(pod, argv, uid=1337, env=clean_env(), stdout=out, stderr=out, cwd=REPO)
        with (tmp / "app-b.log").open("wb") as out:
            net.spawn(
                net.pod("b"),
                [sys.executable, "-m", "tests.sidecar_tls.pod_apps", "http-server", "9080"],
                uid=APP_UID, env=clean_env(), stdout=out, stderr=out, cwd=REPO,
            )  # fmt: skip

        def logs() -> str:
            return "\n".join(
                f"== {p.name}\n{p.read_text(errors='replace')[-2500:]}"
                for p in sorted(tmp.rglob("*.log"))
            )

        for mesh in TD:
            ip = net.pod(mesh).ip
            wait_until(
                f"sidecar {mesh} ready",
                lambda ip=ip: get(f"http://{ip}:15021/healthz/ready")[0] == 200,
                logs=logs,
            )
        yield net, cps, policies
        if os.environ.get("MESHWARD_KEEP_LOGS"):
            print(logs())


def test_a_pod_of_mesh_a_calls_mesh_b_and_b_sees_as_spiffe_id(meshes) -> None:
    net, _, policies = meshes
    wait_until("A's call answered through both sidecars",
               lambda: call(net, "a")["status"] == 200, timeout_s=60)  # fmt: skip
    answer = call(net, "a")
    received = json.loads(answer["body"])
    xfcc = received["headers"]["x-forwarded-client-cert"]
    assert xfcc == [
        f"By={RATINGS_ID};Hash={xfcc[0].split('Hash=')[1].split(';')[0]};"
        "URI=spiffe://a.example/ns/default/sa/x"
    ]

    # B's policy names another principal of A's trust domain: A is denied, as Istio does.
    (policies / "ratings.yaml").write_text(ALLOW.format(principal="a.example/ns/default/sa/other"))
    wait_until("A denied by B's policy", lambda: call(net, "a")["status"] == 403, timeout_s=30)
    assert call(net, "a")["body"] == "RBAC: access denied"
    (policies / "ratings.yaml").write_text(ALLOW.format(principal="a.example/ns/default/sa/x"))
    wait_until("A allowed again", lambda: call(net, "a")["status"] == 200, timeout_s=30)


def test_without_federation_the_call_is_refused_at_the_handshake(meshes) -> None:
    net, cps, _ = meshes
    # C trusts B (it fetched B's bundle) and knows B's service; B never heard of c.example.
    wait_until("C's sidecar has B's bundle", lambda: "b.example" in
               json.dumps(json.loads((cps["c"].state_dir / "ca-status.json").read_text())
                          .get("federation", {})), timeout_s=30)  # fmt: skip
    answer = call(net, "c")
    assert answer["status"] in (502, 503), answer
    sidecar_b = (cps["b"].root.parent.parent / "sidecar-b.log").read_text(errors="replace")
    refusal = f"inbound refused: {net.pod('c').ip}:"
    assert refusal in sidecar_b, sidecar_b[-2000:]
    line = sidecar_b[sidecar_b.index(refusal) :].splitlines()[0]
    assert "TLS handshake failed (STRICT): CERTIFICATE_VERIFY_FAILED" in line
    app_b = (cps["b"].root.parent.parent / "app-b.log").read_text(errors="replace")
    assert "c.example" not in app_b
