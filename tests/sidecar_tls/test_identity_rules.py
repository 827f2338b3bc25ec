"""Pure rules of the data path: peer leaf checks, XFCC, destination resolution."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography.hazmat.primitives import serialization

from meshward_common.errors import PermissionDenied, Unauthenticated
from meshward_common.protos import meshward_discovery_pb2 as pb
from sidecar_tls.destinations import (
    MeshSnapshot,
    MeshWorkload,
    resolve_destination,
    snapshot_from_proto,
)
from sidecar_tls.tls import PeerCerts, verify_peer_leaf
from sidecar_tls.xfcc import format_xfcc, parse_xfcc, sanitize_set
from tests.sidecar_tls.testca import MiniCA

ID = "spiffe://cluster.local/ns/default/sa/reviews"


def _now() -> dt.datetime:
    # Read per test: the test CA issues relative to the wall clock.
    return dt.datetime.now(dt.UTC)


def _der(cert) -> bytes:  # type: ignore[no-untyped-def]
    return cert.public_bytes(serialization.Encoding.DER)


def _peer(leaf, anchor) -> PeerCerts:  # type: ignore[no-untyped-def]
    return PeerCerts(_der(leaf) if leaf is not None else None, _der(anchor))


def test_a_valid_peer_with_the_expected_identity_is_accepted() -> None:
    ca = MiniCA.create()
    leaf = ca.issue(ID).leaf
    peer = verify_peer_leaf(
        _peer(leaf, ca.cert), {"cluster.local": frozenset([_der(ca.cert)])}, _now(), {ID}
    )
    assert str(peer.spiffe_id) == ID
    assert len(peer.cert_sha256) == 64


@pytest.mark.parametrize(
    ("case", "error", "message"),
    [
        ("no certificate", Unauthenticated, "no certificate"),
        ("wrong identity", PermissionDenied, "expected"),
        ("foreign trust domain", Unauthenticated, "not trusted"),
        ("chains to another domain's root", Unauthenticated, "does not chain to a root of"),
        ("expired", Unauthenticated, "validity"),
        ("a CA certificate as leaf", Unauthenticated, "not an X.509-SVID"),
    ],
)
def test_peer_leaf_refusals(case: str, error: type[Exception], message: str) -> None:
    ca = MiniCA.create()
    other = MiniCA.create("example.org", "example.org root")
    der: bytes | None = _der(ca.issue(ID).leaf)
    anchor = _der(ca.cert)
    trust = {"cluster.local": frozenset([anchor]), "example.org": frozenset([_der(other.cert)])}
    expected, now = {ID}, _now()
    if case == "no certificate":
        der = None
    elif case == "wrong identity":
        expected = {"spiffe://cluster.local/ns/default/sa/ratings"}
    elif case == "foreign trust domain":
        trust = {"example.org": trust["example.org"]}
    elif case == "chains to another domain's root":
        # Names cluster.local, but the handshake's chain ended at example.org's root.
        anchor = _der(other.cert)
    elif case == "expired":
        now = _now() + dt.timedelta(days=2)
    elif case == "a CA certificate as leaf":
        der = _der(ca.cert)
    with pytest.raises(error, match=message):
        verify_peer_leaf(PeerCerts(der, anchor), trust, now, expected)


def test_xfcc_is_envoys_format_and_replaces_the_callers() -> None:
    value = format_xfcc("spiffe://td/ns/a/sa/server", "ab" * 32, "spiffe://td/ns/a/sa/client")
    assert value == f"By=spiffe://td/ns/a/sa/server;Hash={'ab' * 32};URI=spiffe://td/ns/a/sa/client"
    assert parse_xfcc(value) == [
        {"By": "spiffe://td/ns/a/sa/server", "Hash": "ab" * 32, "URI": "spiffe://td/ns/a/sa/client"}
    ]
    headers = [
        ("Host", "x"),
        ("X-Forwarded-Client-Cert", "forged"),
        ("x-forwarded-client-cert", "2"),
    ]
    assert sanitize_set(headers, value) == [("Host", "x"), ("x-forwarded-client-cert", value)]
    assert sanitize_set(headers, None) == [("Host", "x")]


SNAPSHOT = MeshSnapshot(
    workloads=(
        MeshWorkload("reviews-v1", "default", "reviews", ID, "10.0.0.5", "reviews", (9080,)),
        MeshWorkload("reviews-v2", "default", "reviews", ID, "10.0.0.6", "reviews", (9080,)),
        MeshWorkload(
            "ingress",
            "istio-system",
            "ingress",
            "spiffe://cluster.local/ns/istio-system/sa/ingress",
        ),
    )
)


def test_destinations_map_addresses_to_services_and_expected_identities() -> None:
    dest = resolve_destination(SNAPSHOT, "10.0.0.6", 9080)
    assert dest.in_mesh
    assert dest.expected_ids == frozenset({ID})
    assert dest.service == "reviews.default.svc.cluster.local"
    assert dest.workload == "reviews-v2"
    outside = resolve_destination(SNAPSHOT, "93.184.216.34", 443)
    assert not outside.in_mesh
    assert outside.expected_ids == frozenset()


@pytest.mark.parametrize(
    ("host", "addresses"),
    [
        ("reviews", ["10.0.0.5", "10.0.0.6"]),
        ("reviews.default", ["10.0.0.5", "10.0.0.6"]),
        ("reviews.other", []),
        ("10.9.9.9", ["10.9.9.9"]),
        ("nowhere", []),
    ],
)
def test_host_names_resolve_through_the_snapshot(host: str, addresses: list[str]) -> None:
    assert SNAPSHOT.addresses_of(host) == addresses


def test_snapshot_from_the_mesh_state_message() -> None:
    state = pb.MeshState(
        version_info="7",
        trust_domain="cluster.local",
        workloads=[
            pb.Workload(
                name="reviews-v1",
                namespace="default",
                service_account="reviews",
                address="10.0.0.5",
                service="reviews",
                ports=[9080],
                labels={"app": "reviews"},
            )
        ],
        policies=[pb.PolicyDocument(source="p.yaml", yaml="kind: X")],
        root_namespace="istio-system",
    )
    snap = snapshot_from_proto(state)
    assert snap.version == "7"
    (w,) = snap.workloads
    assert w.spiffe_id == ID  # derived from namespace and service account when not sent
    assert w.labels == {"app": "reviews"}
    assert snap.policies == (("p.yaml", "kind: X"),)
