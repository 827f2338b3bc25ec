"""The node agent's metric definitions: rotations, Workload API streams open, SVID expiry."""

from __future__ import annotations

import datetime as dt
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshward_common.errors import ConfigError
from node_agent.metrics import AgentMetrics, start_metrics_server

WL = "spiffe://cluster.local/ns/default/sa/a"


def scrape(host: str, port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def test_rotations_streams_and_expiry_scraped_over_http():
    m = AgentMetrics()
    host, port = start_metrics_server("127.0.0.1", 0, m)
    m.record_rotation("workload", "ok")
    m.record_rotation("workload", "ok")
    m.record_rotation("node", "error")
    m.stream_opened("x509_svid")
    m.stream_opened("x509_svid")
    m.stream_closed("x509_svid")
    m.stream_opened("mesh_state")
    expiry = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    m.set_svid_expiry(WL, expiry)
    got = scrape(host, port)
    rot = "meshward_agent_svid_rotations_total"
    assert got[(rot, (("kind", "workload"), ("result", "ok")))] == 2
    assert got[(rot, (("kind", "node"), ("result", "error")))] == 1
    streams = "meshward_agent_workload_api_streams"
    assert got[(streams, (("stream", "x509_svid"),))] == 1
    assert got[(streams, (("stream", "mesh_state"),))] == 1
    assert got[(streams, (("stream", "x509_bundles"),))] == 0
    assert (
        got[("meshward_svid_expiry_timestamp_seconds", (("spiffe_id", WL),))] == expiry.timestamp()
    )
    m.forget_svid(WL)
    m.forget_svid(WL)  # twice is fine
    assert ("meshward_svid_expiry_timestamp_seconds", (("spiffe_id", WL),)) not in scrape(
        host, port
    )


def test_naive_expiry_is_refused():
    with pytest.raises(ConfigError, match="timezone-aware"):
        AgentMetrics().set_svid_expiry(WL, dt.datetime(2030, 1, 1))
