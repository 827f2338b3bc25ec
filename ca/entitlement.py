"""Who may get which identity: a pure decision over the authenticated caller and the registry.

The CSR never decides: a node agent gets its own node SVID, or (named in the request metadata, as
Istio's `ImpersonatedIdentity`) the identity of a workload the registry places on its node.
A join token only ever buys the node SVID of the token's node.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

from meshward_common.errors import InvalidRequest, PermissionDenied, SpiffeIdError
from meshward_common.registry import Registry
from meshward_common.spiffe_id import SpiffeId, node_id, parse_node_id

IMPERSONATED_IDENTITY = "ImpersonatedIdentity"


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: a node agent, proven by mTLS or by a join token."""

    node: str
    method: Literal["mtls", "join-token", "kube-token"]

    def __str__(self) -> str:
        return f"node/{self.node} ({self.method})"

    def node_identity(self, trust_domain: str) -> str:
        return str(_node_identity(trust_domain, self.node))


@functools.lru_cache(maxsize=4096)
def _node_identity(trust_domain: str, node: str) -> SpiffeId:
    # Validating an ID runs regexes; a node asks again and again, so build its ID once.
    return node_id(trust_domain, node)


def entitled_identity(
    caller: Caller, requested: str | None, registry: Registry, trust_domain: str
) -> SpiffeId:
    """The identity to put in the certificate, or PermissionDenied saying why not."""
    own = _node_identity(trust_domain, caller.node)
    if not requested:
        return own
    try:
        wanted = SpiffeId.parse(requested)
    except SpiffeIdError as exc:
        raise InvalidRequest(f"{IMPERSONATED_IDENTITY}: {exc}") from exc
    if wanted == own:
        return own
    if parse_node_id(wanted) is not None:
        raise PermissionDenied(f"{caller} may obtain its own node's identity {own}, not {wanted}")
    if caller.method == "join-token":
        raise PermissionDenied(
            f"a join token only obtains the node SVID {own}, not {wanted}; renew over mTLS first"
        )
    if not wanted.member_of(trust_domain):
        raise PermissionDenied(f"{wanted} is not in trust domain {trust_domain}")
    if registry.node_may_hold(caller.node, wanted, trust_domain):
        return wanted
    # One answer whether the identity is elsewhere or nowhere (istiod's is as opaque): which
    # identities exist and where they run is the audit log's to say, not the caller's to learn.
    elsewhere = sorted({w.node for w in registry.workloads if w.spiffe_id(trust_domain) == wanted})
    raise PermissionDenied(
        f"{caller} may not obtain {wanted}: no workload of that identity is registered on its "
        f"node {caller.node}",
        audit_detail=f"registered on node(s) {', '.join(elsewhere)}"
        if elsewhere
        else "not in the registry",
    )
