"""The sidecar's enforcement adapter: Istio authorization and PeerAuthentication for one workload.

What is the sidecar's own lives here: the last good version of every policy document of the
MeshStates it receives, and the per-request call. The request type, its attributes, the decision
and duplicate detection are `policy`'s, the same code `meshward authz check` and the decision
tests run. The sidecar calls `update()` with the policy files of every MeshState and `check()`
per inbound HTTP request or TCP connection. `update()` does all the work (parse, select, compile)
so that `check()` only normalises the request and runs precompiled predicates. A document that
fails to parse is logged once and its last good version stays in force, so a bad edit never opens
or closes anything by itself.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from meshward_common.errors import ConfigError
from policy.engine import Decision, PolicySet, Workload, WorkloadPolicies
from policy.model import DEFAULT_ROOT_NAMESPACE, MtlsMode, Resource, first_of_each
from policy.parse import parse_text
from policy.peer_auth import resolve_mtls
from policy.request import Request, attributes

log = logging.getLogger(__name__)

_NO_POLICY = Decision(True, "allowed: no authorization policy selects the workload")


@dataclass(frozen=True)
class _State:
    policies: WorkloadPolicies
    policy_set: PolicySet
    modes: dict[int, MtlsMode] = field(default_factory=dict)  # resolved lazily, per port


class InboundAuthorizer:
    """Policy for one workload (`namespace`, `labels`), replaced whole on each update."""

    def __init__(self, namespace: str, labels: Mapping[str, str]) -> None:
        self.workload = Workload(namespace, dict(labels))
        self._good: dict[str, tuple[str, tuple[Resource, ...]]] = {}  # source -> (yaml, parsed)
        self._last_input: tuple[tuple[tuple[str, str], ...], str] | None = None
        self._state = _State(WorkloadPolicies(()), PolicySet())

    def update(self, documents: Sequence[tuple[str, str]], root_namespace: str) -> None:
        root = root_namespace or DEFAULT_ROOT_NAMESPACE
        key = (tuple(documents), root)
        if key == self._last_input:
            return  # the same state streamed again: nothing to recompile
        self._last_input = key
        good: dict[str, tuple[str, tuple[Resource, ...]]] = {}
        for source, text in documents:
            previous = self._good.get(source)
            if previous is not None and previous[0] == text:
                good[source] = previous
                continue
            try:
                good[source] = (text, parse_text(text, source))
            except ConfigError as exc:
                kept = "keeping its last good version" if previous else "ignoring it"
                log.warning("policy %s refused, %s: %s", source, kept, exc)
                if previous is not None:
                    good[source] = previous
        self._good = good
        resources, repeats = first_of_each(r for _, parsed in good.values() for r in parsed)
        for repeat, first in repeats:
            log.warning(
                "%s %s in %s ignored: already defined in %s",
                repeat.kind,
                repeat.key,
                repeat.source,
                first.source,
            )
        policy_set = PolicySet.of(resources, root)
        # One assignment swaps the whole state, so a concurrent check() sees old or new, never half.
        self._state = _State(policy_set.for_workload(self.workload), policy_set)

    def applies(self) -> bool:
        """Whether any authorization policy selects the workload; when none does, `check()`
        allows everything, so callers may skip building the request."""
        return not self._state.policies.empty

    def check(self, req: Request) -> Decision:
        state = self._state
        if state.policies.empty:
            return _NO_POLICY
        decision = state.policies.decide(attributes(req))
        for audit in decision.audits:
            log.info(
                "AUDIT %s matched: from %r %s %s %s -> %s",
                audit,
                req.source_principal or "(plaintext)",
                req.method or "tcp",
                req.path,
                req.destination_port,
                "allowed" if decision.allowed else "denied",
            )
        return decision

    def mtls_mode(self, port: int) -> MtlsMode:
        state = self._state
        mode = state.modes.get(port)
        if mode is None:
            ps = state.policy_set
            mode = resolve_mtls(
                ps.peer_authentication,
                self.workload.namespace,
                self.workload.labels,
                port,
                ps.root_namespace,
                default="STRICT",
            )
            state.modes[port] = mode
        return mode
