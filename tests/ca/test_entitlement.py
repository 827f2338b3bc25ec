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
        "registered on node(s) node-2, not on node-1",
    ),
    (
        MTLS1,
        "spiffe://cluster.local/ns/default/sa/unknown",
        PermissionDenied,
        "not in the registry",
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
        "not in the registry",
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
