"""Inspection cores with real certificates made on the fly: the secret view, the /certs parsing,
and each `check` verdict, including the failing ones and the fix they suggest."""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshward.inspect.checks import (
    FAIL_MARK,
    OK_MARK,
    CheckResult,
    check_sidecar_svid,
    check_signing_certs,
    render,
)
from meshward.inspect.secrets import secret_view, split_certs
from meshward_common.errors import SvidError
from tests.harness.pki import ca_cert, svid_leaf

NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
ID = "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"


def _ca(name: str, days: int, issuer=None, issuer_key=None):
    key = ec.generate_private_key(ec.SECP256R1())
    parent = (issuer, issuer_key) if issuer is not None else None
    cert = ca_cert(
        key,
        name,
        "cluster.local",
        NOW - dt.timedelta(days=1),
        NOW + dt.timedelta(days=days),
        issuer=parent,
    )
    return cert, key


def _leaf(
    issuer, issuer_key, spiffe_id=ID, lifetime=dt.timedelta(hours=1), age=dt.timedelta(minutes=5)
):
    key = ec.generate_private_key(ec.SECP256R1())
    return svid_leaf(
        issuer, issuer_key, key.public_key(), [spiffe_id], NOW - age, NOW - age + lifetime
    )


def _pem(cert) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture
def pki():
    root, root_key = _ca("root", 3650)
    inter, inter_key = _ca("intermediate", 365, root, root_key)
    return root, inter, inter_key


def test_secret_view_shows_id_serial_validity_chain_and_bundle(pki):
    root, inter, inter_key = pki
    leaf = _leaf(inter, inter_key)
    view = secret_view("reviews-v1", [leaf, inter], [root], NOW)
    assert view.problems == ()
    data = view.as_json()
    assert data["spiffeId"] == ID
    assert data["serialNumber"] == format(leaf.serial_number, "x")
    assert data["valid"] is True
    assert data["secondsUntilExpiration"] == 55 * 60
    assert [c["isCA"] for c in data["certChain"]] == [False, True]
    assert data["trustBundle"][0]["subject"] == "CN=root"
    table = view.table()
    assert table.splitlines()[0] == f"SPIFFE ID: {ID}"
    assert re.search(r"default\s+Cert Chain\s+ACTIVE\s+true", table)
    assert re.search(r"default\[1\]\s+Intermediate\s+ACTIVE", table)
    assert "ROOTCA" in table
    json.dumps(data)  # the -o json output is plain JSON


def test_secret_view_of_a_foreign_chain_says_invalid(pki):
    _, inter, inter_key = pki
    other_root, _ = _ca("other root", 3650)
    view = secret_view("reviews-v1", [_leaf(inter, inter_key), inter], [other_root], NOW)
    assert view.problems
    assert "does not verify" in view.problems[0]
    assert view.as_json()["valid"] is False
    assert "INVALID" in view.table()


def test_empty_chain_is_an_error():
    with pytest.raises(SvidError, match="holds no certificate"):
        secret_view("ratings", [], [], NOW)


def test_split_certs_finds_chain_and_bundle_in_any_layout(pki):
    root, inter, inter_key = pki
    leaf = _leaf(inter, inter_key)
    answer = {
        "certificates": [
            {
                "spiffe_id": ID,
                # CA first on purpose: the leaf is recognised, not assumed to come first.
                "cert_chain": [{"pem": _pem(inter)}, {"pem": _pem(leaf)}],
                "trust_bundle": {"pem": _pem(root)},
            }
        ]
    }
    chain, bundle = split_certs(answer)
    assert chain == [leaf, inter]
    assert bundle == [root]
    assert split_certs({"nothing": "here"}) == ([], [])


def test_sidecar_check_passes_for_a_fresh_svid(pki):
    root, inter, inter_key = pki
    result = check_sidecar_svid("reviews-v1", [_leaf(inter, inter_key), inter], [root], ID, NOW)
    assert result.ok, result
    assert ID in result.detail


@pytest.mark.parametrize(
    ("case", "expect"),
    [
        ("near-expiry", "rotation overdue"),
        ("expired", "leaf expired"),
        ("wrong-id", "registry says"),
        ("foreign", "does not verify"),
    ],
)
def test_sidecar_check_failures_say_what_and_what_to_do(pki, case, expect):
    root, inter, inter_key = pki
    chain_root = root
    if case == "near-expiry":
        leaf = _leaf(inter, inter_key, age=dt.timedelta(minutes=50))  # 10 of 60 minutes left
    elif case == "expired":
        leaf = _leaf(inter, inter_key, age=dt.timedelta(hours=2))
    elif case == "wrong-id":
        leaf = _leaf(
            inter, inter_key, spiffe_id="spiffe://cluster.local/ns/default/sa/bookinfo-ratings"
        )
    else:
        leaf = _leaf(inter, inter_key)
        chain_root, _ = _ca("other", 3650)
    result = check_sidecar_svid("reviews-v1", [leaf, inter], [chain_root], ID, NOW)
    assert not result.ok
    assert expect in result.detail
    assert "meshward logs sidecar-reviews-v1" in result.fix


def test_signing_certs_need_more_than_30_days(pki):
    root, inter, _ = pki
    assert all(r.ok for r in check_signing_certs([root], [inter], NOW))
    short_root, short_key = _ca("short root", 20)
    short_inter, _ = _ca("short intermediate", 10, short_root, short_key)
    results = check_signing_certs([short_root], [short_inter], NOW)
    assert [r.ok for r in results] == [False, False]
    assert "20 days left" in results[0].detail
    assert "rotate the root" in results[0].fix
    assert "rotate the intermediate" in results[1].fix
    empty = check_signing_certs([], [], NOW)
    assert not empty[0].ok


def test_render_groups_marks_and_summarises():
    results = [
        CheckResult("control-plane", "reachable", True, "spiffe://x"),
        CheckResult("sidecars", "a: fine", True),
        CheckResult("sidecars", "b: chains", False, "expired", "restart b"),
    ]
    text = render(results)
    assert "control-plane\n-------------" in text
    assert f"{OK_MARK} reachable [spiffe://x]" in text
    assert f"{FAIL_MARK} b: chains [expired]\n    fix: restart b" in text
    assert text.endswith(f"1 check(s) failed {FAIL_MARK}")
    assert render(results[:2]).endswith(f"Status check results are {OK_MARK}")


def test_kubernetes_policy_check_names_each_refused_object() -> None:
    from meshward.inspect.checks import kubernetes_policy_check

    assert kubernetes_policy_check(None) is None  # no API watched: no line
    ok = kubernetes_policy_check({})
    assert ok is not None
    assert ok.ok
    bad = kubernetes_policy_check(
        {
            "AuthorizationPolicy/shop/typo": "unknown key source.ipp",
            "PeerAuthentication/shop/pa": "mtls.mode: 'STRIKT' is not one of ...",
        }
    )
    assert bad is not None
    assert not bad.ok
    assert bad.detail.startswith("2 refused: AuthorizationPolicy/shop/typo: unknown key")
    assert "PeerAuthentication/shop/pa" in bad.detail
    assert "last good version" in bad.fix
