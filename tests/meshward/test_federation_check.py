"""`meshward check` reports each federated trust domain from the CA's ca-status.json: the bundle
in force, and a failed refresh (the bundle kept) as a failed check that says why and what to do."""

from __future__ import annotations

from meshward.inspect.checks import CheckResult, federation_checks

STATUS = {
    "federation": {
        "b.example": {
            "bundle_endpoint_url": "https://127.0.0.1:8443/",
            "endpoint_spiffe_id": "spiffe://b.example/meshward/control-plane",
            "sequence": 2,
            "refresh_hint": 300,
            "roots": 2,
            "refreshed": "2026-12-02T01:45:25+00:00",
            "error": "",
        },
        "c.example": {
            "bundle_endpoint_url": "https://10.0.0.3:8443/",
            "endpoint_spiffe_id": "spiffe://c.example/meshward/control-plane",
            "sequence": 1,
            "refresh_hint": None,
            "roots": 1,
            "refreshed": None,
            "error": "cannot connect to 10.0.0.3:8443: Connection refused",
        },
    }
}


def test_each_federated_domain_is_one_check_and_a_failed_refresh_fails_it() -> None:
    assert federation_checks(STATUS) == [
        CheckResult(
            "control-plane", "federated bundle of b.example", True,
            "2 root(s), sequence 2, refreshed 2026-12-02T01:45:25+00:00",
        ),
        CheckResult(
            "control-plane", "federated bundle of c.example", False,
            "1 root(s), sequence 1 kept; last refresh from https://10.0.0.3:8443/ failed: "
            "cannot connect to 10.0.0.3:8443: Connection refused",
            "check that c.example's bundle endpoint is up and presents "
            "spiffe://c.example/meshward/control-plane (federates-with in the CA's config)",
        ),
    ]  # fmt: skip


def test_no_federation_no_lines() -> None:
    assert federation_checks(None) == []
    assert federation_checks({"roots": []}) == []
