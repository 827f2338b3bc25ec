"""A request's attributes: the one normalisation `policy.decide`, the sidecar and `authz check` share.

The sidecar's adapter and the engine each had their own copy; where they differed (the engine
normalised a TCP connection's path and lowercased every header up front, the sidecar did neither)
the outcome was the same, and these tests pin the one meaning kept: Istio's, where a TCP connection
has no HTTP attributes at all and headers match by lowercase name.
"""

from __future__ import annotations

import ipaddress

from policy.model import AuthorizationPolicy, first_of_each
from policy.request import Request, attributes, namespace_of

SLEEP = "spiffe://cluster.local/ns/foo/sa/sleep"


def test_principal_loses_its_scheme_and_gives_the_namespace() -> None:
    a = attributes(Request(SLEEP, "10.0.0.1", "10.0.0.2", 80, is_http=True))
    assert (a.principal, a.source_namespace) == ("cluster.local/ns/foo/sa/sleep", "foo")
    bare = attributes(Request("cluster.local/ns/bar/sa/x", "", "", 80, is_http=True))
    assert (bare.principal, bare.source_namespace) == ("cluster.local/ns/bar/sa/x", "bar")
    anonymous = attributes(Request("", "", "", 80, is_http=True))
    assert (anonymous.principal, anonymous.source_namespace) == ("", "")


def test_namespace_of_reads_only_the_ns_segment() -> None:
    assert namespace_of("cluster.local/ns/foo/sa/sleep") == "foo"
    assert namespace_of("cluster.local/sa/sleep") == ""
    assert namespace_of("ns/foo") == ""  # "ns" as the trust domain is not a namespace segment
    assert namespace_of("cluster.local/ns") == ""


def test_remote_ip_is_the_source_unless_given() -> None:
    a = attributes(Request(SLEEP, "10.0.0.1", "10.0.0.2", 80, is_http=True))
    assert a.remote_ip == a.source_ip == ipaddress.ip_address("10.0.0.1")
    b = attributes(Request(SLEEP, "10.0.0.1", "10.0.0.2", 80, is_http=True, remote_ip="1.2.3.4"))
    assert b.remote_ip == ipaddress.ip_address("1.2.3.4")


def test_http_path_is_normalised_host_lowercased_headers_by_lower_name() -> None:
    a = attributes(
        Request(
            SLEEP,
            "10.0.0.1",
            "10.0.0.2",
            80,
            is_http=True,
            method="GET",
            path="/public/../%61dmin?x=1",
            host="HttpBin.Foo:8000",
            headers={"X-Version": "v1"},
        )
    )
    assert (a.method, a.path, a.host) == ("GET", "/admin", "httpbin.foo:8000")
    assert a.headers["x-version"] == "v1"
    assert "X-Version" not in a.headers
    assert dict(a.headers) == {"x-version": "v1"}


def test_a_tcp_connection_has_no_http_attributes() -> None:
    a = attributes(
        Request(
            SLEEP,
            "10.0.0.1",
            "10.0.0.2",
            5432,
            is_http=False,
            sni="db.foo.svc.cluster.local",
            method="GET",
            path="/admin",
            host="db",
            headers={"x": "y"},
        )
    )
    assert (a.is_http, a.method, a.path, a.host, dict(a.headers)) == (False, "", "", "", {})
    assert (a.sni, a.destination_port) == ("db.foo.svc.cluster.local", 5432)


def _ap(name: str, source: str, namespace: str = "foo") -> AuthorizationPolicy:
    return AuthorizationPolicy(name, namespace, "ALLOW", None, (), source, 1)


def test_first_of_each_keeps_the_first_and_pairs_every_repeat() -> None:
    a, b, again, c, third = (
        _ap("a", "1.yaml"),
        _ap("b", "1.yaml"),
        _ap("a", "2.yaml"),
        _ap("a", "1.yaml", namespace="bar"),  # another namespace: another object
        _ap("a", "3.yaml"),
    )
    kept, repeats = first_of_each([a, b, again, c, third])
    assert kept == [a, b, c]
    assert repeats == [(again, a), (third, a)]
