"""Decision vectors from Istio's AuthorizationPolicy reference and security tasks.

Each vector names the policies in force (from POLICIES below, as users write them), one request,
and the expected decision with the policy that decided it (None: no rule decided).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import pytest

from policy import Decision, PolicySet, Request, Workload, decide, parse_text
from sidecar_tls.authz import InboundAuthorizer

HTTPBIN = Workload("foo", {"app": "httpbin", "version": "v1"})
TCP_ECHO = Workload("foo", {"app": "tcp-echo"})
OTHER = Workload("foo", {"app": "other"})
BAR = Workload("bar", {"app": "httpbin"})
SLEEP = "spiffe://cluster.local/ns/foo/sa/sleep"
DEV = "spiffe://cluster.local/ns/dev/sa/tester"


def _ap(name: str, spec: str, namespace: str = "foo") -> str:
    head = f"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\n  namespace: {namespace}\n"
    return head + ("spec:\n" + spec if spec.strip() else "spec: {}\n")


POLICIES: dict[str, str] = {
    # Istio reference: "allow-nothing", "deny-all", "allow-all".
    "allow-nothing": _ap("allow-nothing", ""),
    "deny-all": _ap("deny-all", "  action: DENY\n  rules:\n  - {}\n"),
    "allow-all": _ap("allow-all", "  action: ALLOW\n  rules:\n  - {}\n"),
    "deny-nothing": _ap("deny-nothing", "  action: DENY\n"),
    # Reference's first example: sleep's principal or the test namespace, GET /info* or POST /data.
    "httpbin": _ap(
        "httpbin",
        """  selector:
    matchLabels:
      app: httpbin
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/foo/sa/sleep"]
    - source:
        namespaces: ["test"]
    to:
    - operation:
        methods: ["GET"]
        paths: ["/info*"]
    - operation:
        methods: ["POST"]
        paths: ["/data"]
""",
    ),
    # Reference's DENY example: requests from outside namespace foo to POST.
    "deny-post-from-other-ns": _ap(
        "deny-post-from-other-ns",
        """  action: DENY
  rules:
  - from:
    - source:
        notNamespaces: ["foo"]
    to:
    - operation:
        methods: ["POST"]
""",
    ),
    # Explicit-deny task: deny GET, then deny unless x-token: admin.
    "deny-method-get": _ap(
        "deny-method-get",
        '  selector:\n    matchLabels:\n      app: httpbin\n  action: DENY\n  rules:\n  - to:\n    - operation:\n        methods: ["GET"]\n',
    ),
    "deny-unless-admin-token": _ap(
        "deny-unless-admin-token",
        """  selector:
    matchLabels:
      app: httpbin
  action: DENY
  rules:
  - to:
    - operation:
        methods: ["GET"]
    when:
    - key: request.headers[x-token]
      notValues: ["admin"]
""",
    ),
    "allow-path-ip": _ap(
        "allow-path-ip",
        '  selector:\n    matchLabels:\n      app: httpbin\n  action: ALLOW\n  rules:\n  - to:\n    - operation:\n        paths: ["/ip"]\n',
    ),
    "allow-not-private": _ap(
        "allow-not-private",
        '  rules:\n  - to:\n    - operation:\n        notPaths: ["/private*", "*.secret"]\n',
    ),
    "deny-admin": _ap(
        "deny-admin",
        '  action: DENY\n  rules:\n  - to:\n    - operation:\n        paths: ["/admin*"]\n',
    ),
    "allow-public": _ap(
        "allow-public",
        '  rules:\n  - to:\n    - operation:\n        paths: ["/public/*"]\n',
    ),
    "allow-wildcard-hosts": _ap(
        "allow-wildcard-hosts",
        '  rules:\n  - to:\n    - operation:\n        hosts: ["*.example.com", "httpbin.foo"]\n',
    ),
    "allow-principal-prefix": _ap(
        "allow-principal-prefix",
        '  rules:\n  - from:\n    - source:\n        principals: ["cluster.local/ns/foo/*"]\n',
    ),
    "allow-any-authenticated": _ap(
        "allow-any-authenticated",
        '  rules:\n  - from:\n    - source:\n        principals: ["*"]\n',
    ),
    "deny-plaintext": _ap(
        "deny-plaintext",
        '  action: DENY\n  rules:\n  - from:\n    - source:\n        notPrincipals: ["*"]\n',
    ),
    "allow-version-header": _ap(
        "allow-version-header",
        """  rules:
  - when:
    - key: request.headers[version]
      values: ["v1", "v2*"]
""",
    ),
    "allow-ip-block": _ap(
        "allow-ip-block",
        '  rules:\n  - from:\n    - source:\n        ipBlocks: ["10.1.0.0/16", "192.168.0.7"]\n        notIpBlocks: ["10.1.9.0/24"]\n',
    ),
    # TCP task: allow ports 9000 and 9001 only; then a GET method is added (HTTP-only).
    "tcp-ports": _ap(
        "tcp-policy",
        '  selector:\n    matchLabels:\n      app: tcp-echo\n  action: ALLOW\n  rules:\n  - to:\n    - operation:\n        ports: ["9000", "9001"]\n',
    ),
    "tcp-ports-get": _ap(
        "tcp-policy",
        '  selector:\n    matchLabels:\n      app: tcp-echo\n  action: ALLOW\n  rules:\n  - to:\n    - operation:\n        methods: ["GET"]\n        ports: ["9000"]\n',
    ),
    "tcp-deny-get": _ap(
        "tcp-policy",
        '  selector:\n    matchLabels:\n      app: tcp-echo\n  action: DENY\n  rules:\n  - to:\n    - operation:\n        methods: ["GET"]\n        ports: ["9000"]\n',
    ),
    "tcp-allow-ports-header": _ap(
        "tcp-allow-ports-header",
        '  rules:\n  - to:\n    - operation:\n        ports: ["9000"]\n    when:\n    - key: request.headers[x]\n      values: ["y"]\n',
    ),
    "root-allow-nothing": _ap("allow-nothing", "", namespace="istio-system"),
    "root-deny-dev": _ap(
        "deny-dev",
        '  selector:\n    matchLabels:\n      app: httpbin\n  action: DENY\n  rules:\n  - from:\n    - source:\n        namespaces: ["dev"]\n',
        namespace="istio-system",
    ),
    "bar-allow-nothing": _ap("allow-nothing", "", namespace="bar"),
    "audit-admin": _ap(
        "audit-admin",
        '  action: AUDIT\n  rules:\n  - to:\n    - operation:\n        paths: ["/admin*"]\n',
    ),
    "allow-conditions": _ap(
        "allow-conditions",
        """  rules:
  - when:
    - key: source.namespace
      values: ["foo"]
    - key: source.principal
      notValues: ["cluster.local/ns/foo/sa/banned"]
    - key: destination.port
      values: ["8000"]
    - key: destination.ip
      values: ["10.0.0.0/8"]
    - key: connection.sni
      values: ["*.foo.svc.cluster.local"]
    - key: remote.ip
      notValues: ["10.9.9.9"]
""",
    ),
    "allow-request-principal": _ap(
        "allow-request-principal",
        '  rules:\n  - from:\n    - source:\n        requestPrincipals: ["*"]\n',
    ),
    "deny-no-jwt": _ap(
        "deny-no-jwt",
        '  action: DENY\n  rules:\n  - from:\n    - source:\n        notRequestPrincipals: ["*"]\n',
    ),
    "allow-empty-selector": _ap(
        "allow-empty-selector",
        '  selector:\n    matchLabels: {}\n  rules:\n  - to:\n    - operation:\n        methods: ["HEAD"]\n',
    ),
}


class Case(NamedTuple):
    """A request and the workload it arrives at."""

    workload: Workload
    request: Request


def _req(workload: Workload = HTTPBIN, **kw: Any) -> Case:
    defaults: dict[str, Any] = {
        "source_principal": SLEEP,
        "source_ip": "",
        "destination_ip": "",
        "destination_port": 8000,
        "is_http": True,
        "method": "GET",
        "path": "/",
    }
    return Case(workload, Request(**{**defaults, **kw}))


def _decide(policies: PolicySet, case: Case) -> Decision:
    return decide(policies, case.workload, case.request)


# (id, policies, request, expected decision, deciding policy)
VECTORS: list[tuple[str, list[str], Case, str, str | None]] = [
    ("no policies allow", [], _req(), "ALLOW", None),
    ("allow-nothing denies", ["allow-nothing"], _req(), "DENY", None),
    (
        "allow-nothing denies plaintext tcp too",
        ["allow-nothing"],
        _req(is_http=False, source_principal=""),
        "DENY",
        None,
    ),
    ("allow-all allows", ["allow-all"], _req(method="DELETE"), "ALLOW", "foo/allow-all"),
    (
        "allow-all overrides allow-nothing",
        ["allow-nothing", "allow-all"],
        _req(),
        "ALLOW",
        "foo/allow-all",
    ),
    ("deny-all denies", ["deny-all"], _req(), "DENY", "foo/deny-all"),
    ("deny wins over allow-all", ["allow-all", "deny-all"], _req(), "DENY", "foo/deny-all"),
    ("deny without rules matches nothing", ["deny-nothing"], _req(), "ALLOW", None),
    ("reference: sleep GET /info", ["httpbin"], _req(path="/info/1"), "ALLOW", "foo/httpbin"),
    (
        "reference: paths ignore the query",
        ["httpbin"],
        _req(path="/info?debug=1"),
        "ALLOW",
        "foo/httpbin",
    ),
    (
        "reference: sleep POST /data",
        ["httpbin"],
        _req(method="POST", path="/data"),
        "ALLOW",
        "foo/httpbin",
    ),
    (
        "reference: POST /data is exact",
        ["httpbin"],
        _req(method="POST", path="/data/x"),
        "DENY",
        None,
    ),
    (
        "reference: method and path pair together",
        ["httpbin"],
        _req(method="GET", path="/data"),
        "DENY",
        None,
    ),
    (
        "reference: namespace test allowed",
        ["httpbin"],
        _req(source_principal="spiffe://cluster.local/ns/test/sa/any", path="/info"),
        "ALLOW",
        "foo/httpbin",
    ),
    (
        "reference: other principal denied",
        ["httpbin"],
        _req(source_principal=DEV, path="/info"),
        "DENY",
        None,
    ),
    (
        "reference: plaintext denied",
        ["httpbin"],
        _req(source_principal="", path="/info"),
        "DENY",
        None,
    ),
    (
        "selector: other workload unaffected",
        ["httpbin"],
        _req(OTHER, source_principal=DEV, method="PUT"),
        "ALLOW",
        None,
    ),
    (
        "namespace: policy of foo ignores bar",
        ["httpbin"],
        _req(BAR, source_principal=DEV),
        "ALLOW",
        None,
    ),
    (
        "deny POST from other namespace",
        ["deny-post-from-other-ns"],
        _req(source_principal=DEV, method="POST"),
        "DENY",
        "foo/deny-post-from-other-ns",
    ),
    (
        "deny POST: same namespace passes",
        ["deny-post-from-other-ns"],
        _req(method="POST"),
        "ALLOW",
        None,
    ),
    (
        "deny POST: plaintext has no namespace, so not foo",
        ["deny-post-from-other-ns"],
        _req(source_principal="", method="POST"),
        "DENY",
        "foo/deny-post-from-other-ns",
    ),
    ("explicit deny GET", ["deny-method-get"], _req(), "DENY", "foo/deny-method-get"),
    ("explicit deny: POST passes", ["deny-method-get"], _req(method="POST"), "ALLOW", None),
    (
        "deny unless admin token: no header",
        ["deny-unless-admin-token"],
        _req(),
        "DENY",
        "foo/deny-unless-admin-token",
    ),
    (
        "deny unless admin token: admin",
        ["deny-unless-admin-token"],
        _req(headers={"X-Token": "admin"}),
        "ALLOW",
        None,
    ),
    (
        "deny unless admin token: guest",
        ["deny-unless-admin-token"],
        _req(headers={"x-token": "guest"}),
        "DENY",
        "foo/deny-unless-admin-token",
    ),
    (
        "explicit deny task: allow /ip with deny GET",
        ["deny-unless-admin-token", "allow-path-ip"],
        _req(path="/ip", headers={"x-token": "admin"}),
        "ALLOW",
        "foo/allow-path-ip",
    ),
    (
        "explicit deny task: /get not allowed",
        ["deny-unless-admin-token", "allow-path-ip"],
        _req(path="/get", headers={"x-token": "admin"}),
        "DENY",
        None,
    ),
    (
        "notPaths: public",
        ["allow-not-private"],
        _req(path="/public"),
        "ALLOW",
        "foo/allow-not-private",
    ),
    ("notPaths: prefix excluded", ["allow-not-private"], _req(path="/private/x"), "DENY", None),
    (
        "normalized: dot segments cannot dodge a DENY",
        ["deny-admin"],
        _req(path="/public/../admin/x"),
        "DENY",
        "foo/deny-admin",
    ),
    (
        "normalized: escapes cannot dodge a DENY",
        ["deny-admin"],
        _req(path="/%61dmin"),
        "DENY",
        "foo/deny-admin",
    ),
    (
        "normalized: dot segments cannot stretch an ALLOW",
        ["allow-public"],
        _req(path="/public/../private"),
        "DENY",
        None,
    ),
    (
        "normalized: plain public path allowed",
        ["allow-public"],
        _req(path="/public/./a"),
        "ALLOW",
        "foo/allow-public",
    ),
    ("notPaths: suffix excluded", ["allow-not-private"], _req(path="/a/b.secret"), "DENY", None),
    (
        "hosts: suffix wildcard",
        ["allow-wildcard-hosts"],
        _req(host="api.example.com"),
        "ALLOW",
        "foo/allow-wildcard-hosts",
    ),
    (
        "hosts: case-insensitive",
        ["allow-wildcard-hosts"],
        _req(host="API.Example.COM"),
        "ALLOW",
        "foo/allow-wildcard-hosts",
    ),
    (
        "hosts: exact case-insensitive",
        ["allow-wildcard-hosts"],
        _req(host="HTTPBIN.foo"),
        "ALLOW",
        "foo/allow-wildcard-hosts",
    ),
    (
        "hosts: exact does not match with a port",
        ["allow-wildcard-hosts"],
        _req(host="httpbin.foo:8000"),
        "DENY",
        None,
    ),
    ("hosts: other host", ["allow-wildcard-hosts"], _req(host="example.org"), "DENY", None),
    (
        "principal prefix wildcard",
        ["allow-principal-prefix"],
        _req(),
        "ALLOW",
        "foo/allow-principal-prefix",
    ),
    (
        "principal prefix: other namespace",
        ["allow-principal-prefix"],
        _req(source_principal=DEV),
        "DENY",
        None,
    ),
    (
        "principal prefix: trust domain is part of it",
        ["allow-principal-prefix"],
        _req(source_principal="spiffe://other.td/ns/foo/sa/sleep"),
        "DENY",
        None,
    ),
    (
        "presence: any authenticated",
        ["allow-any-authenticated"],
        _req(source_principal=DEV),
        "ALLOW",
        "foo/allow-any-authenticated",
    ),
    (
        "presence: plaintext is not authenticated",
        ["allow-any-authenticated"],
        _req(source_principal=""),
        "DENY",
        None,
    ),
    (
        "notPrincipals *: plaintext denied",
        ["deny-plaintext"],
        _req(source_principal=""),
        "DENY",
        "foo/deny-plaintext",
    ),
    ("notPrincipals *: mTLS passes", ["deny-plaintext"], _req(), "ALLOW", None),
    (
        "header condition v1",
        ["allow-version-header"],
        _req(headers={"Version": "v1"}),
        "ALLOW",
        "foo/allow-version-header",
    ),
    (
        "header condition prefix v2*",
        ["allow-version-header"],
        _req(headers={"version": "v2-beta"}),
        "ALLOW",
        "foo/allow-version-header",
    ),
    (
        "header condition other value",
        ["allow-version-header"],
        _req(headers={"version": "v3"}),
        "DENY",
        None,
    ),
    ("header condition absent", ["allow-version-header"], _req(), "DENY", None),
    (
        "ipBlocks: inside",
        ["allow-ip-block"],
        _req(source_ip="10.1.2.3"),
        "ALLOW",
        "foo/allow-ip-block",
    ),
    (
        "ipBlocks: single address",
        ["allow-ip-block"],
        _req(source_ip="192.168.0.7"),
        "ALLOW",
        "foo/allow-ip-block",
    ),
    (
        "ipBlocks: notIpBlocks carves out",
        ["allow-ip-block"],
        _req(source_ip="10.1.9.1"),
        "DENY",
        None,
    ),
    ("ipBlocks: outside", ["allow-ip-block"], _req(source_ip="10.2.0.1"), "DENY", None),
    (
        "tcp ports: 9000 allowed",
        ["tcp-ports"],
        _req(TCP_ECHO, is_http=False, destination_port=9000),
        "ALLOW",
        "foo/tcp-policy",
    ),
    (
        "tcp ports: 9002 denied",
        ["tcp-ports"],
        _req(TCP_ECHO, is_http=False, destination_port=9002),
        "DENY",
        None,
    ),
    (
        "tcp narrowing: ALLOW rule with methods never matches TCP",
        ["tcp-ports-get"],
        _req(TCP_ECHO, is_http=False, destination_port=9000),
        "DENY",
        None,
    ),
    (
        "tcp narrowing: same rule matches HTTP GET",
        ["tcp-ports-get"],
        _req(TCP_ECHO, destination_port=9000),
        "ALLOW",
        "foo/tcp-policy",
    ),
    (
        "tcp narrowing: header condition also narrows",
        ["tcp-allow-ports-header"],
        _req(is_http=False, destination_port=9000),
        "DENY",
        None,
    ),
    (
        "tcp widening: DENY rule with methods denies TCP on 9000",
        ["tcp-deny-get"],
        _req(TCP_ECHO, is_http=False, destination_port=9000),
        "DENY",
        "foo/tcp-policy",
    ),
    (
        "tcp widening: ports still apply",
        ["tcp-deny-get"],
        _req(TCP_ECHO, is_http=False, destination_port=9001),
        "ALLOW",
        None,
    ),
    (
        "tcp widening: HTTP POST not denied",
        ["tcp-deny-get"],
        _req(TCP_ECHO, method="POST", destination_port=9000),
        "ALLOW",
        None,
    ),
    ("root namespace applies mesh-wide", ["root-allow-nothing"], _req(BAR), "DENY", None),
    (
        "root namespace plus local allow",
        ["root-allow-nothing", "allow-all"],
        _req(),
        "ALLOW",
        "foo/allow-all",
    ),
    (
        "root namespace selector in any namespace",
        ["root-deny-dev"],
        _req(BAR, source_principal=DEV),
        "DENY",
        "istio-system/deny-dev",
    ),
    (
        "root namespace selector: labels must match",
        ["root-deny-dev"],
        _req(OTHER, source_principal=DEV),
        "ALLOW",
        None,
    ),
    (
        "namespace-wide policy applies to every workload",
        ["bar-allow-nothing"],
        _req(BAR),
        "DENY",
        None,
    ),
    (
        "empty matchLabels selects all",
        ["allow-empty-selector"],
        _req(OTHER, method="HEAD"),
        "ALLOW",
        "foo/allow-empty-selector",
    ),
    ("audit does not change the decision", ["audit-admin"], _req(path="/admin/x"), "ALLOW", None),
    (
        "conditions: all true",
        ["allow-conditions"],
        _req(
            destination_ip="10.3.0.1",
            sni="outbound_.8000_._.httpbin.foo.svc.cluster.local",
            source_ip="10.0.0.1",
        ),
        "ALLOW",
        "foo/allow-conditions",
    ),
    (
        "conditions: banned principal",
        ["allow-conditions"],
        _req(
            source_principal="spiffe://cluster.local/ns/foo/sa/banned",
            destination_ip="10.3.0.1",
            sni="a.foo.svc.cluster.local",
        ),
        "DENY",
        None,
    ),
    (
        "conditions: wrong port",
        ["allow-conditions"],
        _req(destination_port=9000, destination_ip="10.3.0.1", sni="a.foo.svc.cluster.local"),
        "DENY",
        None,
    ),
    (
        "conditions: remote ip excluded",
        ["allow-conditions"],
        _req(source_ip="10.9.9.9", destination_ip="10.3.0.1", sni="a.foo.svc.cluster.local"),
        "DENY",
        None,
    ),
    ("conditions: no SNI", ["allow-conditions"], _req(destination_ip="10.3.0.1"), "DENY", None),
    (
        "conditions hold on TCP too",
        ["allow-conditions"],
        _req(is_http=False, destination_ip="10.3.0.1", sni="a.foo.svc.cluster.local"),
        "ALLOW",
        "foo/allow-conditions",
    ),
    (
        "requestPrincipals never match (no end-user auth)",
        ["allow-request-principal"],
        _req(),
        "DENY",
        None,
    ),
    (
        "notRequestPrincipals *: nobody has a JWT, so denied",
        ["deny-no-jwt"],
        _req(),
        "DENY",
        "foo/deny-no-jwt",
    ),
]


def _by_policy_decide(names: list[str], case: Case) -> Decision:
    resources = [r for n in names for r in parse_text(POLICIES[n], f"{n}.yaml")]
    return _decide(PolicySet.of(resources), case)


def _by_sidecar(names: list[str], case: Case) -> Decision:
    """The code the sidecar enforces with: policy documents as a MeshState carries them."""
    authorizer = InboundAuthorizer(case.workload.namespace, case.workload.labels)
    authorizer.update([(f"{n}.yaml", POLICIES[n]) for n in names], "istio-system")
    return authorizer.check(case.request)


@pytest.mark.parametrize("via", [_by_policy_decide, _by_sidecar], ids=["decide", "sidecar"])
@pytest.mark.parametrize(
    ("names", "case", "expected", "policy"),
    [v[1:] for v in VECTORS],
    ids=[v[0] for v in VECTORS],
)
def test_decision_vector(
    via: Callable[[list[str], Case], Decision],
    names: list[str],
    case: Case,
    expected: str,
    policy: str | None,
) -> None:
    decision = via(names, case)
    assert ("ALLOW" if decision.allowed else "DENY") == expected, decision.reason
    assert decision.policy == policy, decision.reason


def test_audit_match_is_reported_and_names_the_rule() -> None:
    resources = parse_text(
        POLICIES["audit-admin"] + "---\n" + POLICIES["deny-method-get"], "p.yaml"
    )
    decision = _decide(PolicySet.of(resources), _req(path="/admin/users"))
    assert not decision.allowed
    assert [a.policy for a in decision.audits] == ["foo/audit-admin"]
    assert decision.audits[0].rule == 0
    quiet = _decide(PolicySet.of(resources), _req(path="/public"))
    assert quiet.audits == ()


def test_decision_explains_policy_rule_and_why() -> None:
    decision = _decide(
        PolicySet.of(parse_text(POLICIES["httpbin"], "httpbin.yaml")),
        _req(method="POST", path="/data"),
    )
    assert decision.match is not None
    assert (decision.match.policy, decision.match.rule, decision.match.source) == (
        "foo/httpbin",
        0,
        "httpbin.yaml",
    )
    assert "methods=['POST']" in decision.match.description
    assert "foo/httpbin rule 0" in decision.reason
    denied = _decide(PolicySet.of(parse_text(POLICIES["httpbin"], "h.yaml")), _req(method="PUT"))
    assert "no rule of the ALLOW policies (foo/httpbin) matched" in denied.reason


def test_root_namespace_is_configurable() -> None:
    resources = parse_text(_ap("allow-nothing", "", namespace="mesh-root"), "root.yaml")
    assert _decide(PolicySet.of(resources, "mesh-root"), _req(BAR)).allowed is False
    # With the default root (istio-system) the same policy is only mesh-root's own.
    assert _decide(PolicySet.of(resources), _req(BAR)).allowed is True


def test_v1beta1_is_accepted_like_v1() -> None:
    text = POLICIES["deny-all"].replace("security.istio.io/v1\n", "security.istio.io/v1beta1\n")
    assert "v1beta1" in text
    assert _decide(PolicySet.of(parse_text(text, "b.yaml")), _req()).allowed is False
