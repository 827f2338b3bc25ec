"""End to end through the sidecars' real data path (InboundProxy/OutboundProxy, real mTLS on
loopback): client -> A -> B -> C, each service with its inbound and outbound sidecar and an app that
forwards the trace headers as bookinfo's apps do.

- with a real Jaeger: one request without trace headers is one trace with every hop's span, linked
  parent to child, with the peer identities;
- metrics scraped from each sidecar's `/stats/prometheus`: counters move by exactly the requests
  made, with the right principals and codes; a denied request is a 403;
- with no collector listening, every request still succeeds (throughput printed, not asserted).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sidecar_tls.destinations import MeshSnapshot, MeshWorkload, resolve_destination
from sidecar_tls.identity import StaticSvidSource
from sidecar_tls.proxy.inbound import InboundProxy
from sidecar_tls.proxy.outbound import OutboundProxy
from sidecar_tls.state import SidecarState
from sidecar_tls.telemetry.metrics import MetricsObserver, bound_port, serve
from sidecar_tls.telemetry.observe import CompositeObserver, HopObserver, NoopObserver
from sidecar_tls.telemetry.tracing import TracingObserver
from tests.harness.jaeger import Jaeger, free_port, run_jaeger
from tests.sidecar_tls.loopback import ModeAuthorizer, run_listener
from tests.sidecar_tls.testca import MiniCA

pytestmark = pytest.mark.slow

NAMES = ("a", "b", "c")
ADDR = {"a": "127.0.0.2", "b": "127.0.0.3", "c": "127.0.0.4"}  # each pod's "IP" on loopback
ID = {n: f"spiffe://cluster.local/ns/default/sa/{n}" for n in NAMES}
NEXT = {"a": "b", "b": "c"}
# The headers bookinfo's apps copy from their inbound request onto their outbound calls.
TRACE_HEADERS = (
    "x-request-id", "traceparent", "tracestate", "x-b3-traceid", "x-b3-spanid",
    "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags", "b3",
)  # fmt: skip


async def request(
    port: int, path: str, host: str, headers: dict[str, str], addr: str = "127.0.0.1"
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request on a fresh connection: (status, lowercased headers, body)."""
    reader, writer = await asyncio.open_connection(addr, port)
    try:
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(
            f"GET {path} HTTP/1.1\r\nhost: {host}\r\n{extra}connection: close\r\n\r\n".encode()
        )
        await writer.drain()
        data = await reader.read()
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    got = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return int(lines[0].split(" ", 2)[1]), got, body


def app_for(name: str, outbound_port: dict[str, int]):  # type: ignore[no-untyped-def]
    """App `name`: C answers 200; A and B call the next service through their own outbound
    sidecar (as iptables would send them), forwarding the trace headers, and relay its status."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            path = lines[0].split(" ")[1]
            seen = {
                k.strip().lower(): v.strip()
                for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)
            }
            if name in NEXT:
                forward = {k: v for k, v in seen.items() if k in TRACE_HEADERS}
                status, _, body = await request(
                    outbound_port[name], path, f"{NEXT[name]}:9080", forward
                )
            else:
                status, body = 200, b"c says hi"
            reason = "OK" if status == 200 else "Error"
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\ncontent-length: {len(body)}\r\n"
                f"connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        finally:
            writer.close()

    return handle


@dataclass
class Mesh:
    entry_port: int  # A's inbound listener (on ADDR["a"])
    metrics_urls: dict[str, str]


@contextlib.asynccontextmanager
async def three_services(
    observers: dict[str, HopObserver], metrics: dict[str, MetricsObserver] | None = None
) -> AsyncIterator[Mesh]:
    ca = MiniCA.create()
    snap = MeshSnapshot(
        version="1",
        workloads=tuple(
            MeshWorkload(n, "default", n, ID[n], address=ADDR[n], service=n) for n in NAMES
        ),
    )
    states = {n: SidecarState(StaticSvidSource(ca.issue(ID[n])), snap) for n in NAMES}
    outbound_port: dict[str, int] = {}
    inbound_port: dict[str, int] = {}
    runners = []
    outbounds: list[OutboundProxy] = []
    async with contextlib.AsyncExitStack() as stack:
        for n in reversed(NAMES):  # C first: each outbound needs the next inbound's port
            if n in NEXT:
                nxt = NEXT[n]
                out = OutboundProxy(
                    states[n],
                    workload=n,
                    namespace="default",
                    observer=observers[n],
                    destination_for=lambda _s, nxt=nxt: resolve_destination(
                        snap, ADDR[nxt], inbound_port[nxt]
                    ),
                )
                outbounds.append(out)
                outbound_port[n] = await stack.enter_async_context(run_listener(out.handle))
            app = await asyncio.start_server(app_for(n, outbound_port), "127.0.0.1", 0)
            stack.push_async_callback(app.wait_closed)
            stack.callback(app.close)
            app_port = app.sockets[0].getsockname()[1]
            inbound = InboundProxy(
                states[n],
                # A takes the plaintext client (PERMISSIVE); C refuses /denied.
                ModeAuthorizer(
                    "PERMISSIVE" if n == "a" else "STRICT", ("/denied",) if n == "c" else ()
                ),
                pod_ip=ADDR[n],
                workload=n,
                namespace="default",
                service=f"{n}.default.svc.cluster.local",
                observer=observers[n],
                app_host="127.0.0.1",
                original_dst=lambda _s, p=app_port: ("127.0.0.1", p),
            )
            inbound_port[n] = await stack.enter_async_context(_listen_on(ADDR[n], inbound.handle))
        urls = {}
        for n, m in (metrics or {}).items():
            runner = await serve("127.0.0.1", 0, m.registry)
            runners.append(runner)
            urls[n] = f"http://127.0.0.1:{bound_port(runner)}/stats/prometheus"
        try:
            yield Mesh(inbound_port["a"], urls)
        finally:
            for r in runners:
                await r.cleanup()
            for out in outbounds:
                out.pool.close_all()


@contextlib.asynccontextmanager
async def _listen_on(addr: str, handle):  # type: ignore[no-untyped-def]
    # run_listener binds 127.0.0.1; the inbound listeners need each pod's own loopback address.
    from sidecar_tls.proxy.net import listen_socket, serve_accepts

    sock = listen_socket(addr, 0)
    task = asyncio.create_task(serve_accepts(sock, handle))
    try:
        yield sock.getsockname()[1]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sock.close()


async def call(mesh: Mesh, path: str = "/hello") -> int:
    status, _, _ = await request(mesh.entry_port, path, "a:9080", {}, addr=ADDR["a"])
    return status


@pytest.fixture(scope="module")
def jaeger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jaeger]:
    j = run_jaeger(tmp_path_factory.mktemp("jaeger-e2e"))
    try:
        yield j
    finally:
        j.stop()


def tags(span: dict[str, Any]) -> dict[str, Any]:
    return {t["key"]: t["value"] for t in span["tags"]}


async def test_one_request_is_one_trace_across_a_b_c(jaeger: Jaeger) -> None:
    tracers = {
        n: TracingObserver(n, "default", jaeger.otlp_endpoint, environ={}, sampling=100.0)
        for n in NAMES
    }
    try:
        async with three_services(dict(tracers)) as mesh:
            assert await call(mesh) == 200
    finally:
        for t in tracers.values():
            t.shutdown()
    (trace,) = await asyncio.to_thread(jaeger.wait_for_traces, "a.default", min_spans=5)
    spans = trace["spans"]
    assert len(spans) == 5
    svc = {s["spanID"]: trace["processes"][s["processID"]]["serviceName"] for s in spans}
    role = {(svc[s["spanID"]], tags(s)["span.kind"]): s for s in spans}
    chain = [
        ("a.default", "server"),
        ("a.default", "client"),
        ("b.default", "server"),
        ("b.default", "client"),
        ("c.default", "server"),
    ]
    assert set(role) == set(chain)
    assert role[chain[0]]["references"] == []  # no trace headers: the first sidecar starts it
    for up, down in itertools.pairwise(chain):
        refs = [r["spanID"] for r in role[down]["references"] if r["refType"] == "CHILD_OF"]
        assert refs == [role[up]["spanID"]], f"{down} is not a child of {up}"
    assert "peer.principal" not in tags(role[("a.default", "server")])  # plaintext client
    assert tags(role[("a.default", "client")])["peer.principal"] == ID["b"]
    assert tags(role[("b.default", "server")])["peer.principal"] == ID["a"]
    assert tags(role[("b.default", "client")])["peer.principal"] == ID["c"]
    assert tags(role[("c.default", "server")])["peer.principal"] == ID["b"]
    assert {tags(s)["http.status_code"] for s in spans} == {"200"}
    # One x-request-id, added by the first sidecar, carried by the apps to every hop.
    assert len({tags(s)["guid:x-request-id"] for s in spans}) == 1


def scrape_text(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (s.name, dict(s.labels), s.value)
        for f in text_string_to_metric_families(text)
        for s in f.samples
    ]


async def scrape(url: str) -> list[tuple[str, dict[str, str], float]]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return scrape_text(await resp.text())


def count(samples, **labels: str) -> float:  # type: ignore[no-untyped-def]
    return sum(
        v
        for name, lab, v in samples
        if name == "istio_requests_total" and labels.items() <= lab.items()
    )


async def test_metrics_count_each_request_with_principals_and_codes() -> None:
    metrics = {n: MetricsObserver() for n in NAMES}
    async with three_services(dict(metrics), metrics) as mesh:
        assert [await call(mesh) for _ in range(3)] == [200, 200, 200]
        assert await call(mesh, "/denied") == 403
        got = {n: await scrape(url) for n, url in mesh.metrics_urls.items()}
    c_in = {
        "reporter": "destination",
        "source_principal": ID["b"],
        "destination_principal": ID["c"],
    }
    assert count(got["c"], response_code="200", **c_in) == 3
    assert count(got["c"], response_code="403", **c_in) == 1  # the denial, counted by C
    assert count(got["c"], connection_security_policy="mutual_tls") == 4
    b_out = {"reporter": "source", "source_principal": ID["b"], "destination_principal": ID["c"]}
    assert count(got["b"], response_code="200", **b_out) == 3
    assert count(got["b"], response_code="403", **b_out) == 1
    assert (
        count(got["b"], reporter="source", destination_service="c.default.svc.cluster.local") == 4
    )
    b_in = {
        "reporter": "destination",
        "source_principal": ID["a"],
        "destination_principal": ID["b"],
    }
    assert count(got["b"], **b_in) == 4
    a_in = {
        "reporter": "destination",
        "source_principal": "unknown",
        "destination_principal": ID["a"],
    }
    assert count(got["a"], connection_security_policy="none", **a_in) == 4
    assert count(got["a"]) == 8  # 4 inbound + 4 outbound, nothing else
    durations = [
        v for name, lab, v in got["c"]
        if name == "istio_request_duration_milliseconds_count" and lab["response_code"] == "200"
    ]  # fmt: skip
    assert durations == [3]


async def _throughput(observers: dict[str, HopObserver], n: int) -> tuple[list[int], float]:
    async with three_services(observers) as mesh:
        began = time.perf_counter()
        statuses = [await call(mesh) for _ in range(n)]
        return statuses, n / (time.perf_counter() - began)


async def test_no_collector_running_the_data_path_works_at_full_speed() -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    n = 60
    baseline, base_rps = await _throughput({k: NoopObserver() for k in NAMES}, n)
    observers: dict[str, HopObserver] = {}
    tracers = []
    for k in NAMES:
        tracer = TracingObserver(
            k, "default", dead, export_timeout_s=0.5, environ={}, sampling=100.0
        )
        tracers.append(tracer)
        observers[k] = CompositeObserver([tracer, MetricsObserver()])
    try:
        statuses, rps = await _throughput(observers, n)
    finally:
        for t in tracers:
            t.shutdown()
    assert baseline == [200] * n
    assert statuses == [200] * n
    print(
        f"A->B->C requests/s: no telemetry {base_rps:.0f}, tracing+metrics, collector absent {rps:.0f}"
    )
