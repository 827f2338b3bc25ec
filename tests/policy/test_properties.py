"""Properties of the decision that must hold for every policy set and request.

Policies are generated as model values over a small vocabulary (so that rules and requests
actually meet), including wildcards, negations and HTTP-only fields on TCP requests.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

from hypothesis import given, settings
from hypothesis import strategies as st

from policy import Decision, PolicySet, Request, Workload, decide
from policy.model import Action, AuthorizationPolicy, Constraint, Rule
from policy.vocabulary import OPERATION_FIELDS, SOURCE_FIELDS

NAMESPACES = ["foo", "bar", "istio-system"]
VOCABULARY: dict[str, list[str]] = {
    "source.principal": ["cluster.local/ns/foo/sa/a", "cluster.local/ns/bar/*", "*", "*/sa/b"],
    "request.principal": ["*", "iss/sub"],
    "source.namespace": ["foo", "bar", "*"],
    "source.ip": ["10.0.0.0/24", "10.0.1.1"],
    "remote.ip": ["10.0.0.0/16"],
    "request.host": ["*.foo", "HTTPBIN.foo", "*"],
    "destination.port": ["80", "9000"],
    "request.method": ["GET", "POST", "P*"],
    "request.path": ["/admin*", "/", "*.png", "*"],
}
FIELDS = {**SOURCE_FIELDS, **OPERATION_FIELDS}


@st.composite
def constraints(draw: st.DrawFn, names: list[str]) -> tuple[Constraint, ...]:
    chosen = draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True))
    out = []
    for name in chosen:
        attribute, negate = FIELDS[name]
        values = draw(
            st.lists(st.sampled_from(VOCABULARY[attribute]), min_size=1, max_size=2, unique=True)
        )
        out.append(Constraint(attribute, tuple(values), negate, name))
    return tuple(out)


@st.composite
def rules(draw: st.DrawFn) -> Rule:
    sources = draw(st.lists(constraints(list(SOURCE_FIELDS)), max_size=2))
    operations = draw(st.lists(constraints(list(OPERATION_FIELDS)), max_size=2))
    conditions: list[Constraint] = []
    if draw(st.booleans()):
        header_values = tuple(
            draw(st.lists(st.sampled_from(["v1", "v*", "*"]), min_size=1, max_size=2, unique=True))
        )
        conditions.append(
            Constraint(
                "request.headers",
                header_values,
                draw(st.booleans()),
                "request.headers[version] values",
                "version",
            )
        )
    return Rule(tuple(sources), tuple(operations), tuple(conditions))


_counter = iter(range(10**9))


@st.composite
def policies(draw: st.DrawFn, actions: list[Action]) -> AuthorizationPolicy:
    selector = draw(st.sampled_from([None, {"app": "a"}, {"app": "b"}]))
    return AuthorizationPolicy(
        name=f"p{next(_counter)}",
        namespace=draw(st.sampled_from(NAMESPACES)),
        action=draw(st.sampled_from(actions)),
        match_labels=selector,
        rules=tuple(draw(st.lists(rules(), max_size=3))),
    )


@st.composite
def requests(draw: st.DrawFn) -> Case:
    principal = draw(
        st.sampled_from(
            ["", "spiffe://cluster.local/ns/foo/sa/a", "spiffe://cluster.local/ns/bar/sa/b"]
        )
    )
    headers = draw(st.sampled_from([{}, {"Version": "v1"}, {"version": "v2"}, {"version": ""}]))
    workload = Workload(
        draw(st.sampled_from(NAMESPACES[:2])), {"app": draw(st.sampled_from(["a", "b"]))}
    )
    return Case(
        workload,
        Request(
            principal,
            draw(st.sampled_from(["10.0.0.5", "10.0.1.1", "192.168.0.1"])),
            "",
            draw(st.sampled_from([80, 9000, 8080])),
            is_http=draw(st.booleans()),
            method=draw(st.sampled_from(["GET", "POST", "PUT"])),
            path=draw(st.sampled_from(["/", "/admin/x", "/img.png", "/other"])),
            host=draw(st.sampled_from(["httpbin.foo", "a.foo", "x.bar"])),
            headers=headers,
        ),
    )


class Case(NamedTuple):
    workload: Workload
    request: Request


def _decide(policies: PolicySet, case: Case) -> Decision:
    return decide(policies, case.workload, case.request)


ANY: list[Action] = ["ALLOW", "DENY", "AUDIT"]
SETTINGS = settings(max_examples=100, deadline=None)


@SETTINGS
@given(st.lists(policies(ANY), max_size=5), policies(["DENY"]), requests())
def test_a_deny_match_always_denies(
    others: list[AuthorizationPolicy], deny: AuthorizationPolicy, request: Case
) -> None:
    alone = _decide(PolicySet.of([deny]), request)
    if alone.allowed:
        return  # the DENY policy does not match this request; nothing to prove here
    combined = _decide(PolicySet.of([*others, deny]), request)
    assert not combined.allowed
    assert combined.match is not None
    assert combined.match.action == "DENY"


@SETTINGS
@given(st.lists(policies(["DENY", "AUDIT"]), max_size=6), requests())
def test_without_allow_policies_only_a_deny_match_denies(
    policy_list: list[AuthorizationPolicy], request: Case
) -> None:
    decision = _decide(PolicySet.of(policy_list), request)
    any_deny_matches = any(not _decide(PolicySet.of([p]), request).allowed for p in policy_list)
    assert decision.allowed is (not any_deny_matches)
    if decision.allowed:
        assert decision.match is None
    # AUDIT never decides
    assert decision.match is None or decision.match.action == "DENY"


@SETTINGS
@given(st.lists(policies(ANY), max_size=5), policies(["ALLOW"]), requests())
def test_adding_an_allow_policy_never_allows_more(
    base: list[AuthorizationPolicy], added: AuthorizationPolicy, request: Case
) -> None:
    before = _decide(PolicySet.of(base), request)
    after = _decide(PolicySet.of([*base, added]), request)
    selected = added in PolicySet.of([added]).selecting(request.workload)
    if not selected:
        # Another workload's ALLOW policy changes nothing here.
        assert after.allowed == before.allowed
    had_allow = any(p.action == "ALLOW" for p in PolicySet.of(base).selecting(request.workload))
    if not had_allow:
        # The first ALLOW policy for a workload can only take away (allow-any becomes allow-listed).
        assert not (after.allowed and not before.allowed)


@SETTINGS
@given(st.lists(policies(ANY), max_size=5), requests())
def test_audit_policies_never_change_the_decision(
    policy_list: list[AuthorizationPolicy], request: Case
) -> None:
    without_audit = [p for p in policy_list if p.action != "AUDIT"]
    assert (
        _decide(PolicySet.of(policy_list), request).allowed
        == _decide(PolicySet.of(without_audit), request).allowed
    )


@SETTINGS
@given(st.lists(policies(["ALLOW"]), min_size=1, max_size=4), requests())
def test_tcp_never_matches_an_allow_rule_that_needs_http(
    policy_list: list[AuthorizationPolicy], request: Case
) -> None:
    tcp = Case(request.workload, dataclasses.replace(request.request, is_http=False))
    decision = _decide(PolicySet.of(policy_list), tcp)
    if decision.match is not None:
        rule = next(p for p in policy_list if p.key == decision.match.policy).rules[
            decision.match.rule
        ]
        assert not any(c.http_only for c in rule.constraints())
