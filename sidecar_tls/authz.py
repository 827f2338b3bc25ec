"""The sidecar's enforcement adapter: Istio authorization and PeerAuthentication for one workload.

The sidecar calls `update()` with the policy files of every MeshState it receives and `check()`
per inbound HTTP request or TCP connection. `update()` does all the work (parse, select, compile)
so that `check()` only normalises the request and runs precompiled predicates. A document that
fails to parse is logged once and its last good version stays in force, so a bad edit never opens
or closes anything by itself.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Literal

from meshward_common.errors import ConfigError
from policy.engine import PolicySet, Workload, WorkloadPolicies, namespace_of
from policy.matchers import Attributes, normalize_path, parse_ip
from policy.model import DEFAULT_ROOT_NAMESPACE, Resource
from policy.parse import parse_text
from policy.peer_auth import resolve_mtls

log = logging.getLogger(__name__)

MtlsMode = Literal["STRICT", "PERMISSIVE", "DISABLE"]
SPIFFE_PREFIX = "spiffe://"


@dataclass(frozen=True)
class AuthzRequest:
    source_principal: str  # full "spiffe://..." or "" if plaintext
    source_ip: str
    destination_ip: str
    destination_port: int
    _: KW_ONLY
    is_http: bool
    sni: str = ""
    method: str = ""
    path: str = ""
    host: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AuthzDecision:
    allowed: bool
    reason: str
    policy: str | None  # namespace/name of the policy that decided, if one did
    audit: bool  # an AUDIT policy matched (and was logged)


_NO_POLICY = AuthzDecision(
    True, "allowed: no authorization policy selects the workload", None, False
)


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
        resources = _without_duplicates(r for _, parsed in good.values() for r in parsed)
        policy_set = PolicySet.of(resources, root)
        # One assignment swaps the whole state, so a concurrent check() sees old or new, never half.
        self._state = _State(policy_set.for_workload(self.workload), policy_set)

    def applies(self) -> bool:
        """Whether any authorization policy selects the workload; when none does, `check()`
        allows everything, so callers may skip building the request."""
        return not self._state.policies.empty

    def check(self, req: AuthzRequest) -> AuthzDecision:
        state = self._state
        if state.policies.empty:
            return _NO_POLICY
        principal = req.source_principal
        if principal.startswith(SPIFFE_PREFIX):
            principal = principal[len(SPIFFE_PREFIX) :]
        source_ip = parse_ip(req.source_ip)
        attrs = Attributes(
            principal=principal,
            source_namespace=namespace_of(principal) if principal else "",
            source_ip=source_ip,
            remote_ip=source_ip,  # no trusted proxies in front of a sidecar
            destination_ip=parse_ip(req.destination_ip),
            destination_port=req.destination_port,
            sni=req.sni,
            is_http=req.is_http,
            method=req.method,
            path=normalize_path(req.path) if req.is_http else "",
            host=req.host.lower(),
            # Lowercased on first use: only a rule on request.headers pays for it.
            headers=_LowerHeaders(req.headers),
        )
        decision = state.policies.decide(attrs)
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
        return AuthzDecision(
            decision.allowed, decision.reason, decision.policy, bool(decision.audits)
        )

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


class _LowerHeaders(Mapping[str, str]):
    """A request's headers by lowercase name, built on first lookup."""

    __slots__ = ("_lower", "_raw")

    def __init__(self, raw: Mapping[str, str]) -> None:
        self._raw = raw
        self._lower: dict[str, str] | None = None

    def _map(self) -> dict[str, str]:
        if self._lower is None:
            self._lower = {k.lower(): v for k, v in self._raw.items()}
        return self._lower

    def __getitem__(self, name: str) -> str:
        return self._map()[name]

    def __contains__(self, name: object) -> bool:
        return name in self._map()

    def __iter__(self) -> Iterator[str]:
        return iter(self._map())

    def __len__(self) -> int:
        return len(self._map())


def _without_duplicates(resources: Iterable[Resource]) -> list[Resource]:
    seen: dict[tuple[str, str], str] = {}
    out: list[Resource] = []
    for r in resources:
        ident = (type(r).__name__, r.key)
        if ident in seen:
            log.warning(
                "%s %s in %s ignored: already defined in %s", ident[0], r.key, r.source, seen[ident]
            )
            continue
        seen[ident] = r.source
        out.append(r)
    return out
