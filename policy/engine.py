"""Istio's authorization decision, as a pure function of the policies and one request.

Order (Istio's): any DENY match denies; else, if no ALLOW policy selects the workload, allow; else
allow only on an ALLOW match. AUDIT matches never change the outcome but are reported. Policies
apply to workloads of their own namespace, or of every namespace when they live in the root one.

Plain TCP has no method, path, host, headers or request principal. As Istio does, a rule of an
ALLOW policy that uses any of those never matches TCP (allow less), while in DENY and AUDIT rules
those fields are dropped and the rest of the rule still applies (deny more).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from policy.matchers import Attributes, Predicate, compile_constraint
from policy.model import (
    DEFAULT_ROOT_NAMESPACE,
    Action,
    AuthorizationPolicy,
    PeerAuthentication,
    Resource,
    Rule,
    selects,
)
from policy.request import Request, attributes


@dataclass(frozen=True)
class Workload:
    namespace: str
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RuleMatch:
    """Which policy and rule matched, and what the rule says."""

    policy: str  # namespace/name
    action: Action
    rule: int
    description: str
    source: str = ""

    def __str__(self) -> str:
        return f"{self.action} policy {self.policy} rule {self.rule} ({self.description})"


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    match: RuleMatch | None = None  # the rule that decided, if a rule did
    audits: tuple[RuleMatch, ...] = ()

    @property
    def policy(self) -> str | None:
        return self.match.policy if self.match else None

    @property
    def audit(self) -> bool:
        """Whether an AUDIT policy matched."""
        return bool(self.audits)


@dataclass(frozen=True)
class CompiledRule:
    match: RuleMatch
    http: Predicate | None  # None: can never match this kind of traffic
    tcp: Predicate | None


def compile_rule(policy: AuthorizationPolicy, index: int, rule: Rule) -> CompiledRule:
    match = RuleMatch(policy.key, policy.action, index, rule.describe(), policy.source)
    return CompiledRule(
        match, _predicate(rule, True, policy.action), _predicate(rule, False, policy.action)
    )


def _predicate(rule: Rule, http: bool, action: Action) -> Predicate | None:
    if not http and action == "ALLOW" and any(c.http_only for c in rule.constraints()):
        return None
    groups = []
    for alternatives in (rule.sources, rule.operations):
        compiled = [
            tuple(compile_constraint(c) for c in g if http or not c.http_only) for g in alternatives
        ]
        # An entry left empty (every field HTTP-only, dropped on TCP) matches anything.
        groups.append(() if any(not g for g in compiled) else tuple(compiled))
    sources, operations = groups
    conditions = tuple(compile_constraint(c) for c in rule.conditions if http or not c.http_only)

    def predicate(a: Attributes) -> bool:
        # Plain loops, not any()/all() over generators: this runs per request and rule.
        for p in conditions:
            if not p(a):
                return False
        return _any_group(sources, a) and _any_group(operations, a)

    return predicate


def _any_group(groups: tuple[tuple[Predicate, ...], ...], a: Attributes) -> bool:
    """True if no groups (no `from`/`to`), or if every predicate of some group holds."""
    if not groups:
        return True
    for group in groups:
        for p in group:
            if not p(a):
                break
        else:
            return True
    return False


class WorkloadPolicies:
    """The policies that select one workload, compiled; `decide` is the per-request call."""

    def __init__(self, policies: Iterable[AuthorizationPolicy]) -> None:
        rules: list[CompiledRule] = []
        self.allow_policies: list[str] = []
        for p in policies:
            rules.extend(compile_rule(p, i, r) for i, r in enumerate(p.rules))
            if p.action == "ALLOW":
                self.allow_policies.append(p.key)
        self.empty = not rules and not self.allow_policies
        # Per protocol and action, (match, predicate) with never-matching rules left out.
        self._by_protocol: dict[bool, dict[str, tuple[tuple[RuleMatch, Predicate], ...]]] = {
            is_http: {
                action: tuple(
                    (r.match, pred)
                    for r in rules
                    if r.match.action == action
                    and (pred := r.http if is_http else r.tcp) is not None
                )
                for action in ("ALLOW", "DENY", "AUDIT")
            }
            for is_http in (True, False)
        }

    def decide(self, a: Attributes) -> Decision:
        rules = self._by_protocol[a.is_http]
        audits = tuple(m for m, pred in rules["AUDIT"] if pred(a)) if rules["AUDIT"] else ()
        for match, pred in rules["DENY"]:
            if pred(a):
                return Decision(False, f"denied by {match}", match, audits)
        if not self.allow_policies:
            return Decision(True, "allowed: no ALLOW policy selects the workload", None, audits)
        for match, pred in rules["ALLOW"]:
            if pred(a):
                return Decision(True, f"allowed by {match}", match, audits)
        names = ", ".join(self.allow_policies)
        return Decision(
            False, f"denied: no rule of the ALLOW policies ({names}) matched", None, audits
        )


@dataclass(frozen=True)
class PolicySet:
    """Every parsed resource of the mesh, and which namespace is the root (mesh-wide) one."""

    authorization: tuple[AuthorizationPolicy, ...] = ()
    peer_authentication: tuple[PeerAuthentication, ...] = ()
    root_namespace: str = DEFAULT_ROOT_NAMESPACE

    @classmethod
    def of(
        cls, resources: Iterable[Resource], root_namespace: str = DEFAULT_ROOT_NAMESPACE
    ) -> PolicySet:
        authz = [r for r in resources if isinstance(r, AuthorizationPolicy)]
        peer = [r for r in resources if isinstance(r, PeerAuthentication)]
        authz.sort(key=lambda p: (p.namespace != root_namespace, p.namespace, p.name))
        peer.sort(key=lambda p: (p.namespace, p.name))
        return cls(tuple(authz), tuple(peer), root_namespace)

    def selecting(self, workload: Workload) -> list[AuthorizationPolicy]:
        return [
            p
            for p in self.authorization
            if p.namespace in (workload.namespace, self.root_namespace)
            and selects(p.match_labels, workload.labels)
        ]

    def for_workload(self, workload: Workload) -> WorkloadPolicies:
        return WorkloadPolicies(self.selecting(workload))


def decide(policies: PolicySet, workload: Workload, request: Request) -> Decision:
    """Istio's decision for one request arriving at `workload`. Pure; compiles the selected
    policies each call, so per-request callers (the sidecar) keep `policies.for_workload(...)`
    and call its `decide` with `attributes(request)`."""
    return policies.for_workload(workload).decide(attributes(request))
