"""The parsed form of Istio's AuthorizationPolicy and PeerAuthentication: plain frozen values.

Every source field, operation field and `when` condition becomes one `Constraint` on a request
attribute (`source.principal`, `request.path`, ...), so the engine handles one shape instead of
three, and the same attribute written as `principals` or as `when: source.principal` behaves alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

Action = Literal["ALLOW", "DENY", "AUDIT"]
MtlsMode = Literal["STRICT", "PERMISSIVE", "DISABLE"]
PeerMode = Literal["UNSET", "STRICT", "PERMISSIVE", "DISABLE"]

DEFAULT_ROOT_NAMESPACE = "istio-system"

# Attributes a constraint can test, and which of them exist only for HTTP requests (Istio's
# "HTTP-only fields": they narrow an ALLOW rule and widen a DENY rule on plain TCP).
IP_ATTRIBUTES = frozenset({"source.ip", "remote.ip", "destination.ip"})
PORT_ATTRIBUTES = frozenset({"destination.port"})
HTTP_ONLY_ATTRIBUTES = frozenset(
    {"request.principal", "request.host", "request.method", "request.path", "request.headers"}
)


@dataclass(frozen=True)
class Constraint:
    """`attribute` matches one of `values` (or, if `negate`, none of them)."""

    attribute: str
    values: tuple[str, ...]
    negate: bool
    field: str  # as the user wrote it, for explanations: "notPaths", "request.headers[x-a] values"
    header: str = ""  # lowercase header name for attribute "request.headers"

    @property
    def http_only(self) -> bool:
        return self.attribute in HTTP_ONLY_ATTRIBUTES

    def describe(self) -> str:
        return f"{self.field}={list(self.values)}"


@dataclass(frozen=True)
class Rule:
    """Matches when any `sources` entry, any `operations` entry and every condition match.

    An empty `sources` (or `operations`) tuple means the rule has no `from` (or `to`): anything.
    """

    sources: tuple[tuple[Constraint, ...], ...] = ()
    operations: tuple[tuple[Constraint, ...], ...] = ()
    conditions: tuple[Constraint, ...] = ()
    line: int = 0

    def constraints(self) -> tuple[Constraint, ...]:
        out: list[Constraint] = []
        for group in (*self.sources, *self.operations):
            out.extend(group)
        out.extend(self.conditions)
        return tuple(out)

    def describe(self) -> str:
        parts = []
        if self.sources:
            parts.append("from " + " | ".join(_group(g) for g in self.sources))
        if self.operations:
            parts.append("to " + " | ".join(_group(g) for g in self.operations))
        if self.conditions:
            parts.append("when " + _group(self.conditions))
        return "; ".join(parts) or "any request"


def _group(constraints: tuple[Constraint, ...]) -> str:
    return ", ".join(c.describe() for c in constraints)


@dataclass(frozen=True)
class AuthorizationPolicy:
    name: str
    namespace: str
    action: Action
    # None: no selector, so the policy applies to every workload of its namespace.
    match_labels: Mapping[str, str] | None
    rules: tuple[Rule, ...]
    source: str = ""  # file the policy came from
    line: int = 0

    @property
    def kind(self) -> str:
        return "AuthorizationPolicy"

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class PeerAuthentication:
    name: str
    namespace: str
    match_labels: Mapping[str, str] | None
    mode: PeerMode
    port_modes: Mapping[int, PeerMode] = field(default_factory=dict)
    source: str = ""
    line: int = 0

    @property
    def kind(self) -> str:
        return "PeerAuthentication"

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


Resource = AuthorizationPolicy | PeerAuthentication


def selects(match_labels: Mapping[str, str] | None, labels: Mapping[str, str]) -> bool:
    """Kubernetes matchLabels: every listed label present with that value; none listed: all."""
    if not match_labels:
        return True
    return all(labels.get(k) == v for k, v in match_labels.items())


def first_of_each(
    resources: Iterable[Resource],
) -> tuple[list[Resource], list[tuple[Resource, Resource]]]:
    """The resources with each kind/namespace/name kept once, the first seen (Kubernetes has one
    object per name; which of two the user meant is a guess, so the later one is refused), and
    every later one paired with the one it repeats. Callers say what a repeat means: a problem of
    the file (parse, lint) or one line of log (the sidecar keeps serving)."""
    first: dict[tuple[str, str], Resource] = {}
    kept: list[Resource] = []
    repeats: list[tuple[Resource, Resource]] = []
    for r in resources:
        ident = (r.kind, r.key)
        earlier = first.get(ident)
        if earlier is not None:
            repeats.append((r, earlier))
            continue
        first[ident] = r
        kept.append(r)
    return kept, repeats
