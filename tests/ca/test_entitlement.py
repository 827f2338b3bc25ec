"""Who may get which identity: the registry decides, never the CSR."""

from __future__ import annotations

import re

import pytest

from ca.entitlement import Caller, entitled_identity
from meshward_common.errors import InvalidRequest, PermissionDenied
from meshward_common.registry import parse_registry

TD = "cluster.local"
REGISTRY = parse_registry(
    """
workloads:
  - {name: reviews-v1, namespace: default, serviceAccount: reviews, node: node-1}
  - {name: ratings-v1, namespace: default, serviceAccount: ratings, node: node-2}
""",
    "registry.yaml",
)
MTLS1 = Caller("node-1", "mtls")
TOKEN1 = Caller("node-1", "join-token")

ALLOWED = [
    (MTLS1, None, "spiffe://cluster.local/meshward/node/node-1"),
    (MTLS1, "", "spiffe://cluster.local/meshward/node/node-1"),
    (TOKEN1, None, "spiffe://cluster.local/meshward/node/node-1"),
    (
        TOKEN1,
        "spiffe://cluster.local/meshward/node/node-1",
        "spiffe://cluster.local/meshward/node/node-1",
    ),
    (
        MTLS1,
        "spiffe://cluster.local/ns/default/sa/reviews",
        "spiffe://cluster.local/ns/default/sa/reviews",
    ),
]

REFUSED = [
    (
        MTLS1,
        "spiffe://cluster.local/ns/default/sa/ratings",
        PermissionDenied,
        "node/node-1 (mtls) may not obtain spiffe://cluster.local/ns/default/sa/ratings: no "
        "workload of that identity is registered on its node node-1",
    ),
    (
        MTLS1,
        "spiffe://cluster.local/ns/default/sa/unknown",
        PermissionDenied,
        "may not obtain spiffe://cluster.local/ns/default/sa/unknown: no workload",
    ),
    (MTLS1, "spiffe://other.domain/ns/default/sa/reviews", PermissionDenied, "not in trust domain"),
    (
        MTLS1,
        "spiffe://cluster.local/meshward/node/node-2",
        PermissionDenied,
        "may obtain its own node",
    ),
    (
        Caller("node-1", "kube-token"),
        "spiffe://cluster.local/meshward/node/node-2",
        PermissionDenied,
        "may obtain its own node",
    ),
    (
        MTLS1,
        "spiffe://cluster.local/meshward/control-plane",
        PermissionDenied,
        "may not obtain spiffe://cluster.local/meshward/control-plane: no workload",
    ),
    (
        TOKEN1,
        "spiffe://cluster.local/ns/default/sa/reviews",
        PermissionDenied,
        "join token only obtains",
    ),
    (MTLS1, "not-an-id", InvalidRequest, "ImpersonatedIdentity"),
]


@pytest.mark.parametrize(("caller", "requested", "expected"), ALLOWED)
def test_entitled(caller: Caller, requested: str | None, expected: str) -> None:
    assert str(entitled_identity(caller, requested, REGISTRY, TD)) == expected


@pytest.mark.parametrize(("caller", "requested", "error", "message"), REFUSED)
def test_not_entitled(caller: Caller, requested: str, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        entitled_identity(caller, requested, REGISTRY, TD)


OTHER_NODES = parse_registry(
    """
workloads:
  - {name: ratings-v1, namespace: default, serviceAccount: ratings, node: node-2}
  - {name: ratings-v2, namespace: default, serviceAccount: ratings, node: node-3}
""",
    "registry.yaml",
)


@pytest.mark.parametrize(
    ("requested", "detail"),
    [
        ("spiffe://cluster.local/ns/default/sa/ratings", "registered on node(s) node-2, node-3"),
        ("spiffe://cluster.local/ns/default/sa/nobody", "not in the registry"),
    ],
)
def test_a_refusal_names_only_the_caller_and_what_it_asked_the_audit_detail_the_rest(
    requested: str, detail: str
) -> None:
    with pytest.raises(PermissionDenied) as refused:
        entitled_identity(MTLS1, requested, OTHER_NODES, TD)
    # Registered elsewhere or nowhere: one answer, no other node named.
    assert str(refused.value) == (
        f"node/node-1 (mtls) may not obtain {requested}: no workload of that identity is "
        "registered on its node node-1"
    )
    assert "node-2" not in str(refused.value)
    assert "node-3" not in str(refused.value)
    assert refused.value.audit_detail == detail
