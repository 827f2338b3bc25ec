"""The sidecar's enforcement adapter: updates from MeshState, per-request checks, mTLS modes."""

from __future__ import annotations

import logging

import pytest

from policy import Request
from sidecar_tls.authz import InboundAuthorizer

SLEEP = "spiffe://cluster.local/ns/foo/sa/sleep"
OTHER = "spiffe://cluster.local/ns/bar/sa/other"


def _ap(name: str, spec: str, namespace: str = "foo") -> str:
    return f"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n{spec}"


ALLOW_SLEEP_GET = _ap(
    "allow-sleep-get",
    '  selector:\n    matchLabels:\n      app: httpbin\n  rules:\n  - from:\n    - source:\n        principals: ["cluster.local/ns/foo/sa/sleep"]\n    to:\n    - operation:\n        methods: ["GET"]\n        ports: ["8000"]\n',
)
DENY_ADMIN = _ap(
    "deny-admin",
    '  action: DENY\n  rules:\n  - to:\n    - operation:\n        paths: ["/admin*"]\n',
)
AUDIT_ALL = _ap("audit-all", "  action: AUDIT\n  rules:\n  - {}\n")
PA = """apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: httpbin
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  mtls:
    mode: PERMISSIVE
  portLevelMtls:
    9000:
      mode: DISABLE
"""


def http(
    principal: str = SLEEP,
    method: str = "GET",
    path: str = "/",
    port: int = 8000,
    headers: dict[str, str] | None = None,
) -> Request:
    return Request(
        principal,
        "10.213.80.2",
        "10.213.80.3",
        port,
        is_http=True,
        method=method,
        path=path,
        host="httpbin.foo:8000",
        headers=headers or {},
    )


def tcp(principal: str = SLEEP, port: int = 8000) -> Request:
    return Request(principal, "10.213.80.2", "10.213.80.3", port, is_http=False)


@pytest.fixture
def authorizer() -> InboundAuthorizer:
    a = InboundAuthorizer("foo", {"app": "httpbin", "version": "v1"})
    a.update(
        [("policies/allow.yaml", ALLOW_SLEEP_GET), ("policies/deny.yaml", DENY_ADMIN)],
        "istio-system",
    )
    return a


def test_no_policies_allow_everything() -> None:
    a = InboundAuthorizer("foo", {"app": "httpbin"})
    d = a.check(http(principal="", method="DELETE"))
    assert d.allowed
    assert d.policy is None
    assert not d.audit


def test_allow_and_deny_name_the_deciding_policy(authorizer: InboundAuthorizer) -> None:
    ok = authorizer.check(http())
    assert (ok.allowed, ok.policy) == (True, "foo/allow-sleep-get")
    assert not authorizer.check(http(path="/x/../admin?q=1")).allowed  # normalized first
    denied = authorizer.check(http(path="/admin/users"))
    assert (denied.allowed, denied.policy) == (False, "foo/deny-admin")
    assert "DENY policy foo/deny-admin rule 0" in denied.reason
    other = authorizer.check(http(principal=OTHER))
    assert (other.allowed, other.policy) == (False, None)
    assert not authorizer.check(http(method="POST")).allowed
    assert not authorizer.check(http(port=8080)).allowed


def test_tcp_connection_checks_connection_attributes(authorizer: InboundAuthorizer) -> None:
    # The only ALLOW rule needs a method, so it never matches TCP; DENY's path is dropped for TCP,
    # which makes deny-admin deny every connection, as Istio does.
    d = authorizer.check(tcp())
    assert (d.allowed, d.policy) == (False, "foo/deny-admin")
    a = InboundAuthorizer("foo", {"app": "db"})
    a.update(
        [
            (
                "p.yaml",
                _ap(
                    "db",
                    '  rules:\n  - from:\n    - source:\n        namespaces: ["foo"]\n    to:\n    - operation:\n        ports: ["5432"]\n',
                ),
            )
        ],
        "istio-system",
    )
    assert a.check(tcp(port=5432)).allowed
    assert not a.check(tcp(port=5433)).allowed
    assert not a.check(tcp(principal=OTHER, port=5432)).allowed
    assert not a.check(tcp(principal="", port=5432)).allowed


def test_update_replaces_the_whole_set(authorizer: InboundAuthorizer) -> None:
    assert authorizer.check(http()).allowed
    authorizer.update([("policies/deny.yaml", DENY_ADMIN)], "istio-system")
    assert authorizer.check(
        http(principal=OTHER, method="POST")
    ).allowed  # the ALLOW policy is gone
    authorizer.update([], "istio-system")
    assert authorizer.check(http(path="/admin")).allowed


def test_bad_document_keeps_its_last_good_version(
    authorizer: InboundAuthorizer, caplog: pytest.LogCaptureFixture
) -> None:
    broken = DENY_ADMIN.replace("action: DENY", "action: DENNY")
    with caplog.at_level(logging.WARNING, logger="sidecar_tls.authz"):
        authorizer.update(
            [("policies/allow.yaml", ALLOW_SLEEP_GET), ("policies/deny.yaml", broken)],
            "istio-system",
        )
    assert not authorizer.check(
        http(path="/admin")
    ).allowed  # the last good deny.yaml still applies
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1
    assert "policies/deny.yaml refused, keeping its last good version" in lines[0]
    assert "policies/deny.yaml:7: spec.action:" in lines[0]


def test_bad_new_document_is_ignored_and_the_rest_applies(caplog: pytest.LogCaptureFixture) -> None:
    a = InboundAuthorizer("foo", {"app": "httpbin"})
    with caplog.at_level(logging.WARNING, logger="sidecar_tls.authz"):
        a.update([("new.yaml", "kind: [\n"), ("deny.yaml", DENY_ADMIN)], "istio-system")
    assert "new.yaml refused, ignoring it" in caplog.text
    assert not a.check(http(path="/admin")).allowed
    assert a.check(http(path="/")).allowed


def test_audit_is_reported_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    a = InboundAuthorizer("foo", {"app": "httpbin"})
    a.update([("audit.yaml", AUDIT_ALL)], "istio-system")
    with caplog.at_level(logging.INFO, logger="sidecar_tls.authz"):
        d = a.check(http(path="/x"))
    assert (d.allowed, d.audit, d.policy) == (True, True, None)
    assert "AUDIT AUDIT policy foo/audit-all rule 0" in caplog.text
    assert "spiffe://cluster.local/ns/foo/sa/sleep" in caplog.text


def test_root_namespace_comes_from_the_mesh_state() -> None:
    a = InboundAuthorizer("foo", {"app": "httpbin"})
    root_deny = _ap("deny-all", "  action: DENY\n  rules:\n  - {}\n", namespace="mesh-root")
    a.update([("root.yaml", root_deny)], "mesh-root")
    assert not a.check(http()).allowed
    a.update([("root.yaml", root_deny)], "istio-system")
    assert a.check(http()).allowed
    a.update(
        [("root.yaml", root_deny.replace("mesh-root", "istio-system"))], ""
    )  # "" means Istio's default
    assert not a.check(http()).allowed


def test_headers_are_matched_case_insensitively_by_name() -> None:
    a = InboundAuthorizer("foo", {"app": "httpbin"})
    a.update(
        [
            (
                "h.yaml",
                _ap(
                    "h",
                    "  rules:\n  - when:\n    - key: request.headers[X-Version]\n      values: [v1]\n",
                ),
            )
        ],
        "istio-system",
    )
    assert a.check(http(headers={"x-version": "v1"})).allowed
    assert not a.check(http(headers={"x-version": "v2"})).allowed
    assert not a.check(http()).allowed


def test_mtls_mode_is_strict_unless_a_peer_authentication_says_otherwise() -> None:
    a = InboundAuthorizer("foo", {"app": "httpbin"})
    assert a.mtls_mode(8000) == "STRICT"
    a.update([("pa.yaml", PA)], "istio-system")
    assert a.mtls_mode(8000) == "PERMISSIVE"
    assert a.mtls_mode(9000) == "DISABLE"
    other = InboundAuthorizer("foo", {"app": "reviews"})
    other.update([("pa.yaml", PA)], "istio-system")
    assert other.mtls_mode(9000) == "STRICT"
    a.update([], "istio-system")
    assert a.mtls_mode(9000) == "STRICT"  # the cached answer is dropped on update


def test_is_http_is_required_and_fields_after_port_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        Request(SLEEP, "1.1.1.1", "2.2.2.2", 80)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Request(SLEEP, "1.1.1.1", "2.2.2.2", 80, True)  # type: ignore[call-arg]


def test_applies_says_whether_any_policy_selects_the_workload() -> None:
    a = InboundAuthorizer("foo", {"app": "httpbin"})
    assert not a.applies()  # nothing loaded
    a.update([("p.yaml", ALLOW_SLEEP_GET)], "istio-system")
    assert a.applies()
    elsewhere = InboundAuthorizer("foo", {"app": "reviews"})  # the selector does not match it
    elsewhere.update([("p.yaml", ALLOW_SLEEP_GET)], "istio-system")
    assert not elsewhere.applies()
    assert elsewhere.check(http(principal="", method="DELETE")).allowed
    a.update([], "istio-system")  # the policy removed
    assert not a.applies()


class _CountingHeaders(dict[str, str]):
    """Headers that count how often they are enumerated (what lowercasing them all costs)."""

    reads = 0

    def items(self):  # type: ignore[override]
        self.reads += 1
        return super().items()


def test_headers_are_not_read_unless_a_rule_uses_them(authorizer: InboundAuthorizer) -> None:
    headers = _CountingHeaders({"X-Version": "v1"})
    assert authorizer.check(http(headers=headers)).allowed
    assert headers.reads == 0  # ALLOW_SLEEP_GET and DENY_ADMIN look at no header
    by_header = InboundAuthorizer("foo", {"app": "httpbin"})
    by_header.update(
        [
            (
                "h.yaml",
                _ap(
                    "h",
                    "  rules:\n  - when:\n    - key: request.headers[x-version]\n      values: [v1]\n",
                ),
            )
        ],
        "istio-system",
    )
    assert by_header.check(http(headers=headers)).allowed
    assert headers.reads == 1


def test_a_policy_defined_in_two_documents_is_enforced_once_from_the_first(
    caplog: pytest.LogCaptureFixture,
) -> None:
    a = InboundAuthorizer("foo", {"app": "httpbin"})
    allow_all = _ap("same", "  rules:\n  - {}\n")
    deny_all = _ap("same", "  action: DENY\n  rules:\n  - {}\n")
    with caplog.at_level(logging.WARNING, logger="sidecar_tls.authz"):
        a.update([("a.yaml", allow_all), ("b.yaml", deny_all)], "")
    assert a.check(http()).allowed  # b.yaml's foo/same (a DENY) is the repeat, ignored
    assert [r.getMessage() for r in caplog.records] == [
        "AuthorizationPolicy foo/same in b.yaml ignored: already defined in a.yaml"
    ]
    a.update([("b.yaml", deny_all)], "")  # a.yaml gone: b.yaml's is the only one, enforced
    assert not a.check(http()).allowed
