"""gRPC through the mesh for real: a grpcio client in pod A calls a grpcio server in pod B, both
with istio-init's rules and `meshward sidecar run` (uid 1337), identities from a real control plane
and node agent, spans to a real Jaeger. Every stream kind goes through both sidecars (h2c from the
app, ALPN h2 between the sidecars), the server sees A's SPIFFE ID in x-forwarded-client-cert, an
Istio DENY on one method refuses only that method, each RPC is one trace, and certificates that
rotate every few seconds fail no call. The mesh's ingress gateway on the host carries gRPC and
plain HTTP/2 (h2c in) into the mesh as well, over mTLS with ALPN h2 and its own identity."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.harness.control_plane import run_control_plane
from tests.harness.ingress import HostIngress, run_ingress
from tests.harness.jaeger import Jaeger, run_jaeger
from tests.harness.node_agent import run_node_agent
from tests.harness.pods import PodNetwork, add_intercepted_pod, pod_network
from tests.sidecar_tls.test_tracing_pods import (
    clean_env,
    get,
    requests_total,
    tags,
    wait_until,
)

pytestmark = [pytest.mark.netns, pytest.mark.slow]

PREFIX, SUBNET, BRIDGE_IP = "mwgr", "10.213.112.0/24", "10.213.112.1"
REPO = Path(__file__).resolve().parents[2]
APP_UID = 1000
ID = {n: f"spiffe://cluster.local/ns/default/sa/{n}" for n in "ab"}
INGRESS_ID = "spiffe://cluster.local/ns/istio-system/sa/ingress"
WORKLOAD_TTL = "16s"  # each sidecar rotates its SVID every ~8 s

DENY_ECHO = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-echo
  namespace: default
spec:
  selector:
    matchLabels:
      app: b
  action: DENY
  rules:
  - to:
    - operation:
        methods: ["POST"]
        paths: ["/test.Echo/Echo"]
"""


def registry_yaml(net: PodNetwork) -> str:
    lines = ["trustDomain: cluster.local", "workloads:"]
    for name in "ab":
        pod = net.pod(name)
        lines += [
            f"  - name: {name}",
            "    namespace: default",
            f"    serviceAccount: {name}",
            "    node: node-1",
            f"    labels: {{app: {name}}}",
            f"    address: {pod.ip}",
            f"    service: {name}",
            "    ports: [9090, 9081]",
            "    selector:",
            f"      netns: {pod.netns}",
            "      uids: [1337]",
        ]
    lines += [
        "  - name: ingress",
        "    namespace: istio-system",
        "    serviceAccount: ingress",
        "    node: node-1",
        "    selector: {netns: host, uids: [1337]}",
    ]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def mesh(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[PodNetwork, Jaeger, Path, Path]]:
    """(the pods, Jaeger, the logs' directory, the node agent's socket)."""
    tmp_path = tmp_path_factory.mktemp("grpc-pods")
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "deny-echo.yaml").write_text(DENY_ECHO)
    with pod_network(PREFIX, SUBNET) as net:
        for name in "ab":
            add_intercepted_pod(net, name)
        net.set_hosts({n: [net.pod(n).ip] for n in "ab"})
        jaeger = run_jaeger(tmp_path, otlp_host=BRIDGE_IP)
        try:
            with (
                run_control_plane(
                    tmp_path, registry_yaml(net), workload_ttl=WORKLOAD_TTL, policy_dir=policies
                ) as cp,
                run_node_agent(tmp_path, cp, workload_ttl=WORKLOAD_TTL) as agent,
            ):
                start_grpc_pair(
                    net,
                    tmp_path,
                    agent.socket_path,
                    ["--otlp-endpoint", jaeger.otlp_endpoint, "--trace-sampling", "100"],
                )
                yield net, jaeger, tmp_path, agent.socket_path
        finally:
            jaeger.stop()


def start_grpc_pair(
    net: PodNetwork, tmp_path: Path, agent_socket: Path, sidecar_args: Sequence[str] = ()
) -> Callable[[], str]:
    """Sidecars in pods a and b (uid 1337, fed by the agent at `agent_socket`), B's grpcio server;
    returns once A's unary call reaches it through both sidecars. The result gives the logs."""
    for name in "ab":
        pod = net.pod(name)
        argv = [
            sys.executable, "-m", "meshward", "sidecar", "run",
            "--agent-socket", str(agent_socket),
            "--pod-ip", pod.ip, "--workload", name, "--namespace", "default",
            *sidecar_args,
        ]  # fmt: skip
        with (tmp_path / f"sidecar-{name}.log").open("wb") as out:
            net.spawn(pod, argv, uid=1337, env=clean_env(), stdout=out, stderr=out, cwd=REPO)
    server = [sys.executable, "-m", "tests.sidecar_tls.grpc_pod_app", "serve"]
    with (tmp_path / "app-b.log").open("wb") as out:
        net.spawn(
            net.pod("b"), server, uid=APP_UID, env=clean_env(), stdout=out, stderr=out, cwd=REPO
        )

    def logs() -> str:
        return "\n".join(
            f"== {p.name}\n{p.read_text(errors='replace')[-2000:]}"
            for p in sorted(tmp_path.glob("*.log"))
        )

    for name in "ab":
        ip = net.pod(name).ip
        wait_until(
            f"sidecar {name} ready",
            lambda ip=ip: get(f"http://{ip}:15021/healthz/ready")[0] == 200,
            logs=logs,
        )
    wait_until(
        "B's gRPC app answering through both sidecars",
        lambda: app(net, "call", "b:9090", "Unary").get("code") == "OK",
        logs=logs,
    )
    return logs


def app(net: PodNetwork, *args: str) -> dict[str, Any]:
    """Run the gRPC client in pod A as the app user; its JSON answer."""
    done = net.run(
        net.pod("a"),
        [sys.executable, "-m", "tests.sidecar_tls.grpc_pod_app", *args],
        uid=APP_UID,
        env={**clean_env(), "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    return answer(done)


def answer(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The JSON line the gRPC client printed last."""
    try:
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"code": "no answer", "stderr": done.stderr[-1500:]}
    return result


def assert_every_kind(result: dict[str, Any], caller: str) -> None:
    """`kinds`' answer: every stream kind worked, and the server saw `caller` in the XFCC."""
    xfcc = result["unary"]["metadata"]["x-forwarded-client-cert"]
    assert xfcc.startswith(f"By={ID['b']};Hash=")
    assert xfcc.endswith(f";URI={caller}")  # the forged value sent by the client was replaced
    assert "admin" not in xfcc
    assert result["server_stream"] == [7, 7, 7, 7]
    assert result["client_stream"] == {"count": 5, "size": 10}
    assert result["bidi"] == ["one", "two", "three"]
    assert result["bidi_code"] == "OK"
    assert result["fail"] == {"code": "NOT_FOUND", "details": "no such rating"}


def test_every_stream_kind_through_both_sidecars_with_the_callers_identity(mesh) -> None:
    net, *_ = mesh
    assert_every_kind(app(net, "kinds", "b:9090"), ID["a"])


def test_a_deny_policy_refuses_only_its_method(mesh) -> None:
    net, *_ = mesh
    assert app(net, "call", "b:9090", "Echo") == {
        "code": "PERMISSION_DENIED",
        "details": "RBAC: access denied",
    }
    assert app(net, "call", "b:9090", "Unary")["code"] == "OK"
    denied = {"reporter": "destination", "request_protocol": "grpc", "grpc_response_status": "7"}
    assert requests_total(net, "b", source_principal=ID["a"], **denied) >= 1


def test_a_plain_http2_client_through_the_mesh(mesh) -> None:
    net, *_ = mesh
    done = net.run(
        net.pod("a"),
        ["curl", "-s", "--http2-prior-knowledge", "-w", "\n%{http_code} %{http_version}",
         "http://b:9081/reviews/1"],
        uid=APP_UID,
        env=clean_env(),
    )  # fmt: skip
    body, _, status = done.stdout.rpartition("\n")
    assert status == "200 2", done.stdout + done.stderr
    seen = json.loads(body)
    assert seen["path"] == "/reviews/1"
    assert seen["headers"]["x-forwarded-client-cert"].endswith(f";URI={ID['a']}")


def test_each_rpc_is_one_trace_across_the_hops(mesh) -> None:
    net, jaeger, *_ = mesh
    assert app(net, "call", "b:9090", "Unary")["code"] == "OK"
    found_trace: dict[str, Any] | None = None

    def found() -> bool:
        nonlocal found_trace
        for trace in jaeger.traces("a.default"):
            paths = {tags(s).get("grpc.path") for s in trace["spans"]}
            if paths == {"/test.Echo/Unary"} and len(trace["spans"]) == 2:
                found_trace = trace
                return True
        return False

    wait_until("a two-span trace of /test.Echo/Unary in Jaeger", found)
    assert found_trace is not None
    spans = found_trace["spans"]
    svc = {s["spanID"]: found_trace["processes"][s["processID"]]["serviceName"] for s in spans}
    role = {(svc[s["spanID"]], tags(s)["span.kind"]): s for s in spans}
    client, server = role[("a.default", "client")], role[("b.default", "server")]
    assert [r["spanID"] for r in server["references"]] == [client["spanID"]]
    assert tags(server)["grpc.status_code"] == "0"
    assert tags(server)["http.protocol"] == "HTTP/2"
    assert tags(server)["peer.principal"] == ID["a"]
    assert tags(client)["peer.principal"] == ID["b"]
    ok = {"request_protocol": "grpc", "grpc_response_status": "0", "response_code": "200"}
    assert requests_total(net, "a", reporter="source", **ok) >= 1
    assert requests_total(net, "b", reporter="destination", **ok) >= 1


def test_rotation_under_load_fails_no_rpc(mesh) -> None:
    net, _, tmp_path, _ = mesh

    def loads(name: str) -> int:
        return (tmp_path / f"sidecar-{name}.log").read_text(errors="replace").count(" loaded,")

    before = {n: loads(n) for n in "ab"}
    result = app(net, "load", "b:9090", "20")  # over two rotations of each sidecar
    assert result.get("failed") == 0, result
    assert result["unary_ok"] > 100
    assert result["bidi_code"] == "OK"  # the stream opened before the rotations finished fine
    assert result["bidi_messages"] > 1
    for name in "ab":
        assert loads(name) >= before[name] + 1, f"sidecar {name} did not rotate"


def host_app(*args: str) -> dict[str, Any]:
    """The gRPC client on the host (where the ingress listens); its JSON answer."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.sidecar_tls.grpc_pod_app", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**clean_env(), "PYTHONPATH": str(REPO)},
    )
    return answer(done)


def until_routed(ingress: HostIngress, check: Callable[[], bool]) -> None:
    """Until the ingress has the mesh state and `check` passes through it."""

    def ok() -> bool:
        if not ingress.running:
            pytest.fail(f"ingress exited:\n{ingress.log()}")
        return check()

    wait_until(f"{ingress.name} routing", ok, timeout_s=60, logs=ingress.log)


def test_the_ingress_carries_grpc_into_the_mesh_with_its_own_identity(mesh) -> None:
    net, jaeger, tmp_path, agent_socket = mesh
    tracing = ["--otlp-endpoint", jaeger.otlp_endpoint, "--trace-sampling", "100"]
    with run_ingress(tmp_path, agent_socket, "b:9090", tracing) as ingress:
        target = f"127.0.0.1:{ingress.port}"
        until_routed(ingress, lambda: host_app("call", target, "Unary").get("code") == "OK")
        result = host_app("kinds", target)
        denied = host_app("call", target, "Echo")
    assert_every_kind(result, INGRESS_ID)  # the ingress's identity, over mTLS
    # b's policy applies per method to calls from the ingress too
    assert denied == {"code": "PERMISSION_DENIED", "details": "RBAC: access denied"}
    from_ingress = {"source_principal": INGRESS_ID, "request_protocol": "grpc"}
    assert (
        requests_total(net, "b", reporter="destination", grpc_response_status="0", **from_ingress)
        >= 1
    )
    assert (
        requests_total(net, "b", reporter="destination", grpc_response_status="7", **from_ingress)
        >= 1
    )

    def traced() -> bool:  # the ingress's CLIENT span and b's SERVER span, one trace per RPC
        for trace in jaeger.traces("ingress.default"):
            kinds = {
                (trace["processes"][s["processID"]]["serviceName"], tags(s)["span.kind"])
                for s in trace["spans"]
                if tags(s).get("grpc.path") == "/test.Echo/Unary"
            }
            if {("ingress.default", "client"), ("b.default", "server")} <= kinds:
                return True
        return False

    wait_until("a trace of a Unary call from the ingress to b in Jaeger", traced)


def test_curl_with_http2_prior_knowledge_through_the_ingress(mesh) -> None:
    _, _, tmp_path, agent_socket = mesh
    with run_ingress(tmp_path, agent_socket, "b:9081") as ingress:
        argv = [
            "curl", "-s", "--http2-prior-knowledge", "-w", "\n%{http_code} %{http_version}",
            f"http://127.0.0.1:{ingress.port}/reviews/1",
        ]  # fmt: skip
        answers: list[subprocess.CompletedProcess[str]] = []

        def answered() -> bool:
            answers.append(subprocess.run(argv, capture_output=True, text=True, timeout=30))
            return answers[-1].stdout.endswith("\n200 2")

        until_routed(ingress, answered)
    body, _, _ = answers[-1].stdout.rpartition("\n")
    seen = json.loads(body)
    assert seen["path"] == "/reviews/1"
    assert seen["headers"]["x-forwarded-client-cert"].endswith(f";URI={INGRESS_ID}")
