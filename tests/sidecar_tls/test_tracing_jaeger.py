"""Spans from three sidecars' observers (A -> B -> C) arrive in a real Jaeger v2 as one trace with
the right parent/child links, kinds, services and peer identities; `meshward traces` draws it."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner

from meshward.traces import traces as traces_command
from sidecar_tls.telemetry.observe import Hop
from sidecar_tls.telemetry.tracing import TracingObserver
from tests.harness.jaeger import Jaeger, run_jaeger

pytestmark = pytest.mark.slow

TD = "spiffe://cluster.local/ns/default/sa/"
IP = {"client": "10.213.48.1", "a": "10.213.48.2", "b": "10.213.48.3", "c": "10.213.48.4"}


@pytest.fixture(scope="module")
def jaeger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jaeger]:
    j = run_jaeger(tmp_path_factory.mktemp("jaeger"))
    try:
        yield j
    finally:
        j.stop()


def inbound(to: str, caller: str | None) -> Hop:
    return Hop(
        direction="inbound",
        protocol="http",
        method="GET",
        path=f"/{to}",
        authority=f"{to}:9080",
        source_principal=TD + caller if caller else "",
        destination_principal=TD + to,
        destination_workload=to,
        destination_namespace="default",
        destination_service=f"{to}.default.svc.cluster.local",
        upstream_address=f"{IP[to]}:9080",
        downstream_address=f"{IP[caller or 'client']}:40000",
        mutual_tls=caller is not None,
    )


def outbound(frm: str, to: str) -> Hop:
    return Hop(
        direction="outbound",
        protocol="http",
        method="GET",
        path=f"/{to}",
        authority=f"{to}:9080",
        source_principal=TD + frm,
        destination_principal=TD + to,
        source_workload=frm,
        source_namespace="default",
        destination_service=f"{to}.default.svc.cluster.local",
        upstream_address=f"{IP[to]}:9080",
        downstream_address=f"{IP[frm]}:50000",
        mutual_tls=True,
    )


def tags(span: dict[str, Any]) -> dict[str, Any]:
    return {t["key"]: t["value"] for t in span["tags"]}


def test_a_b_c_is_one_trace_with_links_and_identities(jaeger: Jaeger) -> None:
    observers = {
        name: TracingObserver(
            name, "default", jaeger.otlp_endpoint, pod_ip=IP[name], environ={}, sampling=100.0
        )
        for name in ("a", "b", "c")
    }
    try:
        # client -> [A in] app A [A out] -> [B in] app B [B out] -> [C in] app C. Each app copies
        # the trace headers it received onto its outbound call, as bookinfo's apps do.
        a_in = observers["a"].start(inbound("a", None), {})  # no trace headers: A starts it
        a_out = observers["a"].start(outbound("a", "b"), dict(a_in.inject()))
        b_in = observers["b"].start(inbound("b", "a"), dict(a_out.inject()))
        b_out = observers["b"].start(outbound("b", "c"), dict(b_in.inject()))
        c_in = observers["c"].start(inbound("c", "b"), dict(b_out.inject()))
        for span in (c_in, b_out, b_in, a_out, a_in):
            span.finish(200, 42)
    finally:
        for obs in observers.values():
            obs.shutdown()  # flushes the batch processor

    found = jaeger.wait_for_traces("c.default", min_spans=5)
    assert len(found) == 1
    trace = found[0]
    spans = trace["spans"]
    assert len(spans) == 5
    assert len({s["traceID"] for s in spans}) == 1
    service = {s["spanID"]: trace["processes"][s["processID"]]["serviceName"] for s in spans}
    by_role = {(service[s["spanID"]], tags(s)["span.kind"]): s for s in spans}
    assert set(by_role) == {
        ("a.default", "server"),
        ("a.default", "client"),
        ("b.default", "server"),
        ("b.default", "client"),
        ("c.default", "server"),
    }

    def parent(span: dict[str, Any]) -> str | None:
        refs = [r["spanID"] for r in span["references"] if r["refType"] == "CHILD_OF"]
        return refs[0] if refs else None

    chain = [
        ("a.default", "server"),
        ("a.default", "client"),
        ("b.default", "server"),
        ("b.default", "client"),
        ("c.default", "server"),
    ]
    assert parent(by_role[chain[0]]) is None
    for up, down in itertools.pairwise(chain):
        assert parent(by_role[down]) == by_role[up]["spanID"], f"{down} is not a child of {up}"

    # Peer identities: a server span names its caller, a client span the server it reached.
    assert "peer.principal" not in tags(by_role[("a.default", "server")])  # plaintext client
    assert tags(by_role[("a.default", "client")])["peer.principal"] == TD + "b"
    assert tags(by_role[("b.default", "server")])["peer.principal"] == TD + "a"
    assert tags(by_role[("b.default", "client")])["peer.principal"] == TD + "c"
    assert tags(by_role[("c.default", "server")])["peer.principal"] == TD + "b"
    c_tags = tags(by_role[("c.default", "server")])
    assert c_tags["http.status_code"] == "200"
    assert c_tags["upstream_cluster"] == "inbound|9080||"
    assert by_role[("b.default", "client")]["operationName"] == "c.default.svc.cluster.local:9080/*"

    # The same trace is what `meshward traces` prints, one line per span, tree-indented.
    result = CliRunner().invoke(
        traces_command, ["--service", "a.default", "--limit", "1", "--query-url", jaeger.query_url]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(f"trace {trace['traceID']}")
    assert "5 spans, 3 services" in lines[0]
    rows = lines[2:]
    assert [r.split()[0] for r in rows] == [s for s, _ in chain]
    assert rows[4].startswith("          c.default")  # depth 4 under the root
    assert rows[3].rstrip().endswith(TD + "c")
