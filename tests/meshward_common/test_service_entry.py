"""Istio ServiceEntry for a federated mesh's services: the subset we take, refused in one line
(file:line: field: reason) for the rest; and how a sidecar resolves an address with it."""

from __future__ import annotations

import pytest

from meshward_common.errors import ConfigError
from meshward_common.service_entry import parse_service_entries
from sidecar_tls.destinations import MeshSnapshot, RemoteService, resolve_destination

ENTRY = """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: ratings-b
  namespace: default
spec:
  hosts: [ratings.b.example]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
    - {number: 9080, name: http, protocol: HTTP}
  endpoints:
    - address: 10.0.0.7
  subjectAltNames: [spiffe://b.example/ns/default/sa/ratings]
"""


def test_a_federated_service_entry_parses() -> None:
    (entry,) = parse_service_entries(ENTRY, "se.yaml")
    assert (entry.name, entry.namespace, entry.hosts) == (
        "ratings-b",
        "default",
        ("ratings.b.example",),
    )
    assert (entry.ports, entry.endpoints) == ((9080,), ("10.0.0.7",))
    assert entry.subject_alt_names == ("spiffe://b.example/ns/default/sa/ratings",)


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        (
            "location: MESH_INTERNAL",
            "location: MESH_EXTERNAL",
            ":8: spec.location: only MESH_INTERNAL",
        ),
        ("resolution: STATIC", "resolution: DNS", ":9: spec.resolution: only STATIC"),
        (
            "  hosts: [ratings.b.example]\n",
            "  hosts: [ratings.b.example]\n  addresses: [1.2.3.4]\n",
            ":8: spec.addresses: VIPs are not supported",
        ),
        ("address: 10.0.0.7", "address: ratings", "spec.endpoints.address: 'ratings' is not an IP"),
        ("number: 9080", "number: 0", "spec.ports.number: must be a port number"),
        ("name: http,", "targetPort: 1, name: http,", "spec.ports.targetPort: not supported"),
        (
            "[spiffe://b.example/ns/default/sa/ratings]",
            "[b.example/ns/default/sa/ratings]",
            "spec.subjectAltNames",
        ),
        (
            "  subjectAltNames: [spiffe://b.example/ns/default/sa/ratings]\n",
            "",
            "spec.subjectAltNames: must be a non-empty list",
        ),
        (
            "kind: ServiceEntry",
            "kind: Service",
            "kind: expected networking.istio.io/v1 ServiceEntry",
        ),
    ],
)
def test_what_is_not_supported_is_refused_in_one_line(old: str, new: str, reason: str) -> None:
    assert old in ENTRY
    with pytest.raises(ConfigError, match=reason) as info:
        parse_service_entries(ENTRY.replace(old, new), "se.yaml")
    assert str(info.value).startswith("se.yaml:")


def test_the_same_entry_twice_is_refused() -> None:
    with pytest.raises(ConfigError, match="defined twice"):
        parse_service_entries(ENTRY + "---\n" + ENTRY, "se.yaml")


def test_a_sidecar_expects_the_entrys_identities_at_its_endpoints() -> None:
    remote = RemoteService(
        "ratings.b.example", "default", frozenset({9080}), frozenset({"10.0.0.7"}),
        frozenset({"spiffe://b.example/ns/default/sa/ratings"}),
    )  # fmt: skip
    snapshot = MeshSnapshot(remote_services=(remote,))
    dest = resolve_destination(snapshot, "10.0.0.7", 9080)
    assert dest.in_mesh
    assert dest.service == "ratings.b.example"
    assert dest.expected_ids == {"spiffe://b.example/ns/default/sa/ratings"}
    assert not resolve_destination(snapshot, "10.0.0.7", 9081).in_mesh  # not one of its ports
    assert not resolve_destination(snapshot, "10.0.0.8", 9080).in_mesh
