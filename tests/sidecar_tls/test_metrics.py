"""MetricsObserver scraped over real HTTP from `serve()` and parsed with prometheus_client's parser:
counters move by exactly the requests made, with Istio's labels, principals and codes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshward_common.errors import ConfigError
from sidecar_tls.telemetry.metrics import DURATION_BUCKETS_MS, MetricsObserver, bound_port, serve
from sidecar_tls.telemetry.observe import Hop

A_ID = "spiffe://cluster.local/ns/default/sa/a"
B_ID = "spiffe://cluster.local/ns/default/sa/b"

INBOUND = Hop(
    direction="inbound",
    protocol="http",
    method="GET",
    path="/",
    authority="b:9080",
    source_principal=A_ID,
    destination_principal=B_ID,
    source_workload="a",
    source_namespace="default",
    destination_workload="b",
    destination_namespace="default",
    destination_service="b.default.svc.cluster.local",
    upstream_address="10.213.48.3:9080",
    mutual_tls=True,
)
OUTBOUND = Hop(
    direction="outbound",
    protocol="http",
    source_principal=A_ID,
    destination_principal=B_ID,
    source_workload="a",
    source_namespace="default",
    destination_workload="b",
    destination_namespace="default",
    destination_service="b.default.svc.cluster.local",
    mutual_tls=True,
)


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
async def served() -> AsyncIterator[tuple[MetricsObserver, FakeClock, str]]:
    clock = FakeClock()
    obs = MetricsObserver(now=clock)
    runner = await serve("127.0.0.1", 0, obs.registry)
    try:
        yield obs, clock, f"http://127.0.0.1:{bound_port(runner)}/stats/prometheus"
    finally:
        await runner.cleanup()


async def scrape(url: str) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    samples: dict[str, list[tuple[str, dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.name, dict(s.labels), s.value))
    return samples


def value(samples, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (0 when none)."""
    return sum(v for _, lab, v in samples.get(name, []) if labels.items() <= lab.items())


async def test_requests_counted_exactly_with_principals_and_codes(served):
    obs, _, url = served
    before = await scrape(url)
    for _ in range(7):
        obs.start(INBOUND, {}).finish(200, 10)
    for _ in range(2):
        obs.start(INBOUND, {}).finish(403, 19)  # a denied request
    for _ in range(3):
        obs.start(OUTBOUND, {}).finish(200, 10)
    after = await scrape(url)
    inbound = {"reporter": "destination", "source_principal": A_ID, "destination_principal": B_ID}
    assert value(before, "istio_requests_total") == 0
    assert value(after, "istio_requests_total", response_code="200", **inbound) == 7
    assert value(after, "istio_requests_total", response_code="403", **inbound) == 2
    assert value(after, "istio_requests_total", reporter="source", response_code="200") == 3
    assert value(after, "istio_requests_total") == 12
    (_, labels, _) = next(
        s for s in after["istio_requests_total"] if s[1]["response_code"] == "403"
    )
    assert labels == {
        "reporter": "destination",
        "source_workload": "a",
        "source_workload_namespace": "default",
        "source_principal": A_ID,
        "source_canonical_service": "a",
        "destination_workload": "b",
        "destination_workload_namespace": "default",
        "destination_principal": B_ID,
        "destination_service": "b.default.svc.cluster.local",
        "destination_service_name": "b",
        "destination_service_namespace": "default",
        "destination_canonical_service": "b",
        "request_protocol": "http",
        "connection_security_policy": "mutual_tls",
        "response_code": "403",
        "grpc_response_status": "",
        "response_flags": "-",
    }


async def test_security_policy_is_reported_by_the_destination_only(served):
    obs, _, url = served
    obs.start(INBOUND, {}).finish(200, 1)
    obs.start(Hop(direction="inbound", protocol="http", mutual_tls=False), {}).finish(200, 1)
    obs.start(OUTBOUND, {}).finish(200, 1)
    got = await scrape(url)
    assert value(got, "istio_requests_total", connection_security_policy="mutual_tls") == 1
    plaintext = {"connection_security_policy": "none", "source_principal": "unknown"}
    assert value(got, "istio_requests_total", **plaintext) == 1
    assert (
        value(got, "istio_requests_total", reporter="source", connection_security_policy="unknown")
        == 1
    )


async def test_duration_histogram_uses_istio_buckets_in_ms(served):
    obs, clock, url = served
    span = obs.start(INBOUND, {})
    clock.t += 0.0072  # 7.2 ms
    span.finish(200, 1)
    span.finish(200, 1)  # a second finish is ignored
    got = await scrape(url)
    name = "istio_request_duration_milliseconds"
    assert value(got, name + "_count", response_code="200") == 1
    assert value(got, name + "_sum") == pytest.approx(7.2)
    assert value(got, name + "_bucket", le="5.0") == 0
    assert value(got, name + "_bucket", le="10.0") == 1
    les = [float(lab["le"]) for _, lab, _ in got[name + "_bucket"] if lab["le"] != "+Inf"]
    assert tuple(les) == tuple(float(b) for b in DURATION_BUCKETS_MS)
    assert value(got, "istio_requests_total") == 1


async def test_tcp_connections_opened_and_closed(served):
    obs, _, url = served
    tcp = Hop(direction="inbound", protocol="tcp", source_principal=A_ID, mutual_tls=True)
    spans = [obs.start(tcp, {}) for _ in range(3)]
    mid = await scrape(url)
    spans[0].finish(0, 100)
    spans[1].finish(0, 50)
    after = await scrape(url)
    assert value(mid, "istio_tcp_connections_opened_total", source_principal=A_ID) == 3
    assert value(mid, "istio_tcp_connections_closed_total") == 0
    assert value(after, "istio_tcp_connections_closed_total", request_protocol="tcp") == 2
    assert value(after, "istio_tcp_sent_bytes_total") == 150
    assert value(after, "istio_requests_total") == 0  # TCP is not a request


async def test_svid_expiry_gauge_tracks_the_current_svid(served):
    obs, _, url = served
    first = datetime(2030, 1, 1, tzinfo=UTC)
    second = datetime(2030, 1, 2, tzinfo=UTC)
    obs.set_svid_expiry(A_ID, first)
    got = await scrape(url)
    assert value(got, "meshward_svid_expiry_timestamp_seconds", spiffe_id=A_ID) == first.timestamp()
    obs.set_svid_expiry(A_ID, second)
    got = await scrape(url)
    assert got["meshward_svid_expiry_timestamp_seconds"] == [
        ("meshward_svid_expiry_timestamp_seconds", {"spiffe_id": A_ID}, second.timestamp())
    ]
    with pytest.raises(ConfigError, match="timezone-aware"):
        obs.set_svid_expiry(A_ID, datetime(2030, 1, 1))


async def test_each_sidecar_has_its_own_registry():
    one, two = MetricsObserver(), MetricsObserver()
    one.start(INBOUND, {}).finish(200, 1)
    assert b'response_code="200"' in one.render()
    assert b'response_code="200"' not in two.render()


async def test_only_the_stats_path_is_served(served):
    _, _, url = served
    base = url.removesuffix("/stats/prometheus")
    async with aiohttp.ClientSession() as session, session.get(base + "/other") as resp:
        assert resp.status == 404


async def test_serve_on_a_busy_port_is_a_config_error(served):
    obs, _, url = served
    port = int(url.split(":")[2].split("/")[0])
    with pytest.raises(ConfigError, match=f"127.0.0.1:{port}"):
        await serve("127.0.0.1", port, obs.registry)


def test_prometheus_text_parses_with_the_reference_parser():
    obs = MetricsObserver()
    obs.start(INBOUND, {}).finish(503, 0)
    families = {f.name: f for f in text_string_to_metric_families(obs.render().decode())}
    assert families["istio_requests"].type == "counter"
    assert families["istio_request_duration_milliseconds"].type == "histogram"


async def test_namespaces_come_from_the_verified_ids_when_the_hop_lacks_them(served):
    obs, _, url = served
    # An inbound sidecar knows its caller only by the SPIFFE ID from the TLS handshake.
    obs.start(
        Hop(
            direction="inbound",
            protocol="http",
            source_principal=A_ID.replace("default", "shop"),
            mutual_tls=True,
        ),
        {},
    ).finish(200, 1)
    obs.start(
        Hop(
            direction="inbound",
            protocol="http",
            source_principal="spiffe://cluster.local/meshward/node/n1",
        ),
        {},
    ).finish(200, 1)
    got = await scrape(url)
    assert (
        value(
            got, "istio_requests_total", source_workload_namespace="shop", source_workload="unknown"
        )
        == 1
    )
    assert value(got, "istio_requests_total", source_workload_namespace="unknown") == 1


def test_durations_fall_in_le_buckets_cumulatively():
    times = iter([0.0, 0.005, 0.0, 0.0004, 0.0, 4000.0])  # 5 ms (on a bound), 0.4 ms, 4000 s
    obs = MetricsObserver(now=lambda: next(times))
    hop = Hop(direction="inbound", protocol="http")
    for _ in range(3):
        obs.start(hop, {}).finish(200, 1)
    families = {f.name: f for f in text_string_to_metric_families(obs.render().decode())}
    buckets = {
        s.labels["le"]: s.value
        for s in families["istio_request_duration_milliseconds"].samples
        if s.name.endswith("_bucket")
    }
    assert (buckets["0.5"], buckets["1.0"], buckets["5.0"], buckets["10.0"]) == (1, 1, 2, 2)
    assert buckets["3.6e+06"] == 2
    assert buckets["+Inf"] == 3
    sums = {s.name: s.value for s in families["istio_request_duration_milliseconds"].samples}
    assert sums["istio_request_duration_milliseconds_count"] == 3
    assert sums["istio_request_duration_milliseconds_sum"] == pytest.approx(4000005.4)
