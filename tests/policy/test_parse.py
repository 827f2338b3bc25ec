"""Policy files: what is accepted, and every refusal names file, line, field and reason."""

from __future__ import annotations

import pytest

from meshward_common.errors import ConfigError
from policy import PolicyFileError, parse_text
from policy.model import AuthorizationPolicy, PeerAuthentication

GOOD = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: httpbin
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/sleep"]
        notPrincipals: ["cluster.local/ns/default/sa/bad"]
        requestPrincipals: ["issuer/subject"]
        notRequestPrincipals: ["x/y"]
        namespaces: ["test"]
        notNamespaces: ["prod"]
        ipBlocks: ["10.0.0.0/8"]
        notIpBlocks: ["10.1.0.0/16"]
        remoteIpBlocks: ["192.168.1.1"]
        notRemoteIpBlocks: ["fd00::/8"]
    to:
    - operation:
        hosts: ["*.example.com"]
        notHosts: ["bad.example.com"]
        ports: ["8000", 9000]
        notPorts: ["8001"]
        methods: ["GET"]
        notMethods: ["DELETE"]
        paths: ["/info*"]
        notPaths: ["*.png"]
    when:
    - key: request.headers[X-Version]
      values: ["v1"]
      notValues: ["v0"]
    - {key: source.ip, values: ["10.0.0.1"]}
    - {key: remote.ip, values: ["10.0.0.0/24"]}
    - {key: source.namespace, values: ["foo"]}
    - {key: source.principal, values: ["*"]}
    - {key: destination.ip, values: ["10.0.0.2"]}
    - {key: destination.port, values: ["8000"]}
    - {key: connection.sni, values: ["*.svc.cluster.local"]}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: strict
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  mtls:
    mode: STRICT
  portLevelMtls:
    8080:
      mode: DISABLE
"""


def test_every_supported_field_parses_from_a_multi_document_file() -> None:
    resources = parse_text(GOOD, "good.yaml")
    assert len(resources) == 2
    policy, peer = resources
    assert isinstance(policy, AuthorizationPolicy)
    assert isinstance(peer, PeerAuthentication)
    assert (policy.key, policy.action, dict(policy.match_labels or {})) == (
        "foo/httpbin",
        "ALLOW",
        {"app": "httpbin"},
    )
    rule = policy.rules[0]
    assert len(rule.sources[0]) == 10
    assert len(rule.operations[0]) == 8
    assert len(rule.conditions) == 9  # values and notValues of the header key are two constraints
    header = rule.conditions[0]
    assert (header.attribute, header.header, header.negate) == (
        "request.headers",
        "x-version",
        False,
    )
    assert (peer.mode, dict(peer.port_modes)) == ("STRICT", {8080: "DISABLE"})
    assert policy.source == "good.yaml"


def test_defaults_namespace_default_and_action_allow() -> None:
    (policy,) = parse_text(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\n",
        "a.yaml",
    )
    assert isinstance(policy, AuthorizationPolicy)
    assert (policy.namespace, policy.action, policy.rules, policy.match_labels) == (
        "default",
        "ALLOW",
        (),
        None,
    )


def test_empty_text_is_no_policies() -> None:
    assert parse_text("", "empty.yaml") == ()
    assert parse_text("---\n---\n", "empty.yaml") == ()


def _doc(spec: str, kind: str = "AuthorizationPolicy") -> str:
    # Line 6 of each document is the first line of `spec`'s body.
    return f"apiVersion: security.istio.io/v1\nkind: {kind}\nmetadata:\n  name: p\nspec:\n{spec}"


# (id, text, expected line, field, words in the reason)
REFUSALS: list[tuple[str, str, int, str, str]] = [
    ("unknown spec field", _doc("  acton: DENY\n"), 6, "spec.acton", "unknown field"),
    (
        "CUSTOM action",
        _doc("  action: CUSTOM\n  provider: {name: ext}\n"),
        6,
        "spec.action",
        "CUSTOM",
    ),
    (
        "bad action",
        _doc("  action: REJECT\n"),
        6,
        "spec.action",
        "'REJECT' is not ALLOW, DENY or AUDIT",
    ),
    (
        "targetRef",
        _doc("  targetRef: {kind: Gateway, name: gw}\n"),
        6,
        "spec.targetRef",
        "not supported",
    ),
    (
        "targetRefs",
        _doc("  targetRefs:\n  - {kind: Service, name: s}\n"),
        6,
        "spec.targetRefs",
        "not supported",
    ),
    (
        "matchExpressions",
        _doc("  selector:\n    matchExpressions: []\n"),
        7,
        "spec.selector.matchExpressions",
        "use matchLabels",
    ),
    (
        "label not a string",
        _doc("  selector:\n    matchLabels:\n      version: 1\n"),
        8,
        "spec.selector.matchLabels.version",
        "must be a string",
    ),
    (
        "unknown source field",
        _doc("  rules:\n  - from:\n    - source:\n        principal: [a]\n"),
        9,
        "spec.rules[0].from[0].source.principal",
        "unknown field",
    ),
    (
        "unknown operation field",
        _doc("  rules:\n  - to:\n    - operation:\n        path: [/a]\n"),
        9,
        "spec.rules[0].to[0].operation.path",
        "unknown field",
    ),
    (
        "unknown rule field",
        _doc("  rules:\n  - fromm: []\n"),
        7,
        "spec.rules[0].fromm",
        "unknown field",
    ),
    (
        "empty source",
        _doc("  rules:\n  - from:\n    - source: {}\n"),
        8,
        "spec.rules[0].from[0].source",
        "must not be empty",
    ),
    (
        "source is not a list",
        _doc("  rules:\n  - from:\n    - source:\n        principals: a\n"),
        9,
        "spec.rules[0].from[0].source.principals",
        "must be a list of strings",
    ),
    (
        "principal with scheme",
        _doc(
            "  rules:\n  - from:\n    - source:\n        principals: [spiffe://cluster.local/ns/a/sa/b]\n"
        ),
        9,
        "spec.rules[0].from[0].source.principals[0]",
        "without the spiffe:// prefix",
    ),
    (
        "bad CIDR",
        _doc("  rules:\n  - from:\n    - source:\n        ipBlocks: [10.0.0.0/33]\n"),
        9,
        "spec.rules[0].from[0].source.ipBlocks[0]",
        "not an IP address or CIDR",
    ),
    (
        "bad port",
        _doc("  rules:\n  - to:\n    - operation:\n        ports: [http]\n"),
        9,
        "spec.rules[0].to[0].operation.ports[0]",
        "not a port number",
    ),
    (
        "wildcard in the middle",
        _doc("  rules:\n  - to:\n    - operation:\n        paths: [/a/*/b]\n"),
        9,
        "spec.rules[0].to[0].operation.paths[0]",
        "only alone, at the start or at the end",
    ),
    (
        "wildcard at both ends",
        _doc("  rules:\n  - to:\n    - operation:\n        paths: ['*a*']\n"),
        9,
        "spec.rules[0].to[0].operation.paths[0]",
        "not both",
    ),
    (
        "empty value",
        _doc("  rules:\n  - to:\n    - operation:\n        methods: ['']\n"),
        9,
        "spec.rules[0].to[0].operation.methods[0]",
        "empty value",
    ),
    (
        "unknown when key",
        _doc("  rules:\n  - when:\n    - key: request.auth.claims[iss]\n      values: [x]\n"),
        8,
        "spec.rules[0].when[0].key",
        "unknown key 'request.auth.claims[iss]'",
    ),
    (
        "when without values",
        _doc("  rules:\n  - when:\n    - key: source.ip\n"),
        8,
        "spec.rules[0].when[0]",
        "needs values or notValues",
    ),
    (
        "when without key",
        _doc("  rules:\n  - when:\n    - values: [a]\n"),
        8,
        "spec.rules[0].when[0].key",
        "required",
    ),
    (
        "when unknown field",
        _doc("  rules:\n  - when:\n    - key: source.ip\n      value: [a]\n"),
        9,
        "spec.rules[0].when[0].value",
        "unknown field",
    ),
    (
        "when bad port",
        _doc("  rules:\n  - when:\n    - key: destination.port\n      values: ['0']\n"),
        9,
        "spec.rules[0].when[0].values[0]",
        "not a port number",
    ),
    (
        "bad mTLS mode",
        _doc("  mtls:\n    mode: STRICTER\n", "PeerAuthentication"),
        7,
        "spec.mtls.mode",
        "'STRICTER' is not one of",
    ),
    (
        "portLevelMtls without selector",
        _doc("  portLevelMtls:\n    8080: {mode: DISABLE}\n", "PeerAuthentication"),
        6,
        "spec.portLevelMtls",
        "needs a workload selector",
    ),
    (
        "portLevelMtls bad port",
        _doc(
            "  selector: {matchLabels: {a: b}}\n  portLevelMtls:\n    http: {mode: DISABLE}\n",
            "PeerAuthentication",
        ),
        8,
        "spec.portLevelMtls.http",
        "port must be a number",
    ),
    (
        "unknown PeerAuthentication field",
        _doc("  mode: STRICT\n", "PeerAuthentication"),
        6,
        "spec.mode",
        "unknown field",
    ),
    (
        "wrong apiVersion",
        "apiVersion: security.istio.io/v2\nkind: AuthorizationPolicy\nmetadata: {name: a}\n",
        1,
        "apiVersion",
        "is not one of",
    ),
    (
        "wrong kind",
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: a}\n",
        2,
        "kind",
        "is not AuthorizationPolicy or PeerAuthentication",
    ),
    (
        "no name",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  namespace: foo\n",
        3,
        "metadata.name",
        "required",
    ),
    (
        "bad namespace",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: a\n  namespace: Foo_Bar\n",
        5,
        "metadata.namespace",
        "DNS-1123",
    ),
    (
        "unknown top-level field",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\nspc: {}\n",
        4,
        "spc",
        "unknown field",
    ),
    (
        "YAML syntax error",
        "apiVersion: security.istio.io/v1\nkind: [\n",
        3,
        "yaml",
        "YAML syntax error",
    ),
    (
        "duplicate key",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nkind: AuthorizationPolicy\n",
        3,
        "yaml",
        "duplicate key",
    ),
    ("not a mapping", "- a\n- b\n", 1, "document 1", "must be a mapping"),
    ("a later document not a mapping", _doc("") + "---\n- a\n", 7, "document 2", "a list"),
    (
        "defined twice",
        _doc("  action: DENY\n") + "---\n" + _doc("  action: ALLOW\n"),
        8,
        "metadata.name",
        "defined twice (first at line 1)",
    ),
]


@pytest.mark.parametrize(
    ("text", "line", "field", "reason"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
def test_refusal_names_file_line_field_and_reason(
    text: str, line: int, field: str, reason: str
) -> None:
    with pytest.raises(PolicyFileError) as info:
        parse_text(text, "policies/p.yaml")
    problems = info.value.problems
    assert any(p.line == line and p.field == field and reason in p.reason for p in problems), (
        problems
    )
    assert f"policies/p.yaml:{line}: {field}: " in str(info.value)
    assert isinstance(info.value, ConfigError)


def test_one_bad_document_refuses_the_whole_file_and_lists_every_problem() -> None:
    good = _doc("  action: DENY\n  rules:\n  - {}\n")
    bad = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: b}\nspec:\n  action: NOPE\n  rulez: []\n"
    with pytest.raises(PolicyFileError) as info:
        parse_text(good + "---\n" + bad, "mixed.yaml")
    fields = [p.field for p in info.value.problems]
    assert fields == ["spec.action", "spec.rulez"]
    assert [p.line for p in info.value.problems] == [14, 15]
