"""The CA's metric definitions: issued/refused counters by kind and reason, CSR latency, served
over real HTTP and parsed with prometheus_client's parser."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ca.metrics import REFUSAL_REASONS, CaMetrics, refusal_reason, start_metrics_server
from meshward_common import errors


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (errors.SpiffeIdError("bad id"), "invalid_spiffe_id"),
        (errors.InvalidRequest("bad csr"), "invalid_request"),
        (errors.Unauthenticated("no cert"), "unauthenticated"),
        (errors.PermissionDenied("not on node"), "permission_denied"),
        (errors.RateLimited("slow down"), "rate_limited"),
        (errors.NotReady("no root"), "not_ready"),
        (errors.SvidError(["bad"]), "invalid_certificate"),
        (RuntimeError("bug"), "internal"),
    ],
)
def test_refusal_reason_is_the_error_class(exc, reason):
    assert refusal_reason(exc) == reason
    assert reason in REFUSAL_REASONS


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def test_counts_and_latency_scraped_over_http():
    m = CaMetrics()
    host, port = start_metrics_server("127.0.0.1", 0, m)
    for _ in range(3):
        m.record_issued("workload", 0.002)
    m.record_issued("node", 0.004)
    m.record_refused("workload", errors.PermissionDenied("x"), 0.001)
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as resp:
        got = samples(resp.read().decode())
    assert got[("meshward_ca_certificates_issued_total", (("kind", "workload"),))] == 3
    assert got[("meshward_ca_certificates_issued_total", (("kind", "node"),))] == 1
    refused = (("kind", "workload"), ("reason", "permission_denied"))
    assert got[("meshward_ca_certificates_refused_total", refused)] == 1
    assert got[("meshward_ca_csr_duration_seconds_count", (("outcome", "issued"),))] == 4
    assert got[("meshward_ca_csr_duration_seconds_count", (("outcome", "refused"),))] == 1
    assert got[("meshward_ca_csr_duration_seconds_sum", (("outcome", "issued"),))] == pytest.approx(
        0.010
    )


def test_zero_series_exist_before_the_first_csr():
    got = samples(generate_latest(CaMetrics().registry).decode())
    assert got[("meshward_ca_certificates_issued_total", (("kind", "workload"),))] == 0
