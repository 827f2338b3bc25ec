"""The whole mesh for real, in network namespaces: control plane, node agent, and three pods A, B, C,
each with istio-init's rules, a `meshward sidecar run` process (uid 1337) exporting to a real Jaeger,
and (in B and C) an app forwarding the trace headers. A request from A's app to B's service, which
calls C's, is one trace in Jaeger with A's CLIENT span, B's SERVER and CLIENT spans and C's SERVER
span, linked and carrying the peer identities; each sidecar's :15090 counts it."""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness.control_plane import run_control_plane
from tests.harness.jaeger import Jaeger, run_jaeger
from tests.harness.node_agent import run_node_agent
from tests.harness.pods import PodNetwork, add_intercepted_pod, pod_network

pytestmark = [pytest.mark.netns, pytest.mark.slow]

PREFIX, SUBNET, BRIDGE_IP = "mwtr", "10.213.48.0/24", "10.213.48.1"
REPO = Path(__file__).resolve().parents[2]
APP_UID = 1000
ID = {n: f"spiffe://cluster.local/ns/default/sa/{n}" for n in "abc"}

# B and C: a plain HTTP app on :9080; B calls C with the trace headers it received (as bookinfo).
APP = r"""
import http.server, sys, urllib.error, urllib.request
NEXT = sys.argv[1] if len(sys.argv) > 1 else ""
FWD = {"x-request-id", "traceparent", "tracestate", "x-b3-traceid", "x-b3-spanid",
       "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags", "b3"}
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        status, body = 200, b"leaf"
        if NEXT:
            fwd = {k: v for k, v in self.headers.items() if k.lower() in FWD}
            req = urllib.request.Request(NEXT + self.path, headers=fwd)
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    status, body = r.status, r.read()
            except urllib.error.HTTPError as e:
                status, body = e.code, e.read()
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", 9080), H).serve_forever()
"""
CLIENT = r"""
import sys, urllib.error, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=10) as r:
        print(r.status)
except urllib.error.HTTPError as e:
    print(e.code)
"""


def registry_yaml(net: PodNetwork) -> str:
    lines = ["trustDomain: cluster.local", "workloads:"]
    for name in "abc":
        pod = net.pod(name)
        lines += [
            f"  - name: {name}",
            "    namespace: default",
            f"    serviceAccount: {name}",
            "    node: node-1",
            f"    labels: {{app: {name}}}",
            f"    address: {pod.ip}",
            f"    service: {name}",
            "    ports: [9080]",
            "    selector:",
            f"      netns: {pod.netns}",
            "      uids: [1337]",
        ]
    return "\n".join(lines) + "\n"


def clean_env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONUNBUFFERED": "1", "HOME": "/"}


def get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def wait_until(what: str, check: Any, timeout_s: float = 30.0, logs: Any = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if check():
                return
        time.sleep(0.2)
    pytest.fail(f"{what} not within {timeout_s}s\n{logs() if logs else ''}")


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[tuple[PodNetwork, Jaeger]]:
    with pod_network(PREFIX, SUBNET) as net:
        for name in "abc":
            add_intercepted_pod(net, name)
        net.set_hosts({n: [net.pod(n).ip] for n in "abc"})
        jaeger = run_jaeger(tmp_path, otlp_host=BRIDGE_IP)
        try:
            with (
                run_control_plane(tmp_path, registry_yaml(net)) as cp,
                run_node_agent(tmp_path, cp) as agent,
            ):
                logs: list[Path] = []
                for name in "abc":
                    pod = net.pod(name)
                    log = tmp_path / f"sidecar-{name}.log"
                    logs.append(log)
                    argv = [
                        sys.executable, "-m", "meshward", "sidecar", "run",
                        "--agent-socket", str(agent.socket_path),
                        "--pod-ip", pod.ip, "--workload", name, "--namespace", "default",
                        "--otlp-endpoint", jaeger.otlp_endpoint,
                        "--trace-sampling", "100",  # Istio's demo profile: every trace
                    ]  # fmt: skip
                    with log.open("wb") as out:
                        net.spawn(
                            pod, argv, uid=1337, env=clean_env(), stdout=out, stderr=out, cwd=REPO
                        )
                for name, nxt in (("b", "http://c:9080"), ("c", "")):
                    argv = [sys.executable, "-c", APP, *([nxt] if nxt else [])]
                    net.spawn(net.pod(name), argv, uid=APP_UID, env=clean_env(), cwd="/")

                def show_logs() -> str:
                    text = [f"== {p.name}\n{p.read_text(errors='replace')[-1500:]}" for p in logs]
                    return "\n".join(
                        [*text, "== agent", agent.log()[-3000:], "== ca", cp.log()[-1500:]]
                    )

                for name in "abc":
                    ip = net.pod(name).ip
                    wait_until(
                        f"sidecar {name} ready",
                        lambda ip=ip: get(f"http://{ip}:15021/healthz/ready")[0] == 200,
                        logs=show_logs,
                    )
                yield net, jaeger
        finally:
            jaeger.stop()


def call_from_a(net: PodNetwork, url: str) -> str:
    done = net.run(net.pod("a"), [sys.executable, "-c", CLIENT, url], uid=APP_UID, env=clean_env())
    return done.stdout.strip() or done.stderr.strip()[-300:]


def wait_for_trace(jaeger: Jaeger, service: str, path: str, spans: int) -> dict[str, Any]:
    """The trace whose spans name `path`, once all `spans` of it have reached Jaeger (each
    sidecar exports in its own batches)."""
    deadline = time.monotonic() + 30
    seen: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        seen = [
            t
            for t in jaeger.traces(service)
            if any(tags(s).get("http.url", "").endswith(path) for s in t["spans"])
        ]
        if len(seen) == 1 and len(seen[0]["spans"]) >= spans:
            return seen[0]
        time.sleep(0.3)
    pytest.fail(f"no single trace of {spans} spans for {path} in Jaeger: {seen}")


def tags(span: dict[str, Any]) -> dict[str, Any]:
    return {t["key"]: t["value"] for t in span["tags"]}


def requests_total(net: PodNetwork, pod: str, **labels: str) -> float:
    _, text = get(f"http://{net.pod(pod).ip}:15090/stats/prometheus")
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "istio_requests_total" and labels.items() <= s.labels.items()
    )


def test_request_through_a_b_c_pods_is_one_trace_and_counted(mesh) -> None:
    net, jaeger = mesh
    # The first calls may race the apps' start: retry until B and C answer.
    wait_until(
        "B -> C answering through the sidecars",
        lambda: call_from_a(net, "http://b:9080/warmup") == "200",
    )
    for pod in "abc":
        before = requests_total(net, pod)
        assert before >= 1  # the warm-up went through every sidecar
    b_in = {
        "reporter": "destination",
        "source_principal": ID["a"],
        "destination_principal": ID["b"],
    }
    c_in = {
        "reporter": "destination",
        "source_principal": ID["b"],
        "destination_principal": ID["c"],
    }
    b0 = requests_total(net, "b", response_code="200", **b_in)
    c0 = requests_total(net, "c", response_code="200", **c_in)
    for _ in range(3):
        assert call_from_a(net, "http://b:9080/hello") == "200"
    assert requests_total(net, "b", response_code="200", **b_in) == b0 + 3
    assert requests_total(net, "c", response_code="200", **c_in) == c0 + 3
    a_out = {"reporter": "source", "source_principal": ID["a"], "destination_principal": ID["b"]}
    assert requests_total(net, "a", response_code="200", **a_out) >= 4

    # One more request on a path of its own, so that its trace is told apart from the others.
    assert call_from_a(net, "http://b:9080/traced") == "200"
    trace = wait_for_trace(jaeger, "a.default", "/traced", spans=4)
    assert len(trace["spans"]) == 4
    svc = {s["spanID"]: trace["processes"][s["processID"]]["serviceName"] for s in trace["spans"]}
    role = {(svc[s["spanID"]], tags(s)["span.kind"]): s for s in trace["spans"]}
    chain = [
        ("a.default", "client"),
        ("b.default", "server"),
        ("b.default", "client"),
        ("c.default", "server"),
    ]
    assert set(role) == set(chain)
    assert (
        role[chain[0]]["references"] == []
    )  # the app sent no trace headers: A's sidecar starts it
    for up, down in itertools.pairwise(chain):
        refs = [r["spanID"] for r in role[down]["references"] if r["refType"] == "CHILD_OF"]
        assert refs == [role[up]["spanID"]], f"{down} is not a child of {up}"
    assert tags(role[("a.default", "client")])["peer.principal"] == ID["b"]
    assert tags(role[("b.default", "server")])["peer.principal"] == ID["a"]
    assert tags(role[("b.default", "client")])["peer.principal"] == ID["c"]
    assert tags(role[("c.default", "server")])["peer.principal"] == ID["b"]
