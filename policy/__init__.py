"""policy: Istio AuthorizationPolicy and PeerAuthentication, parsed and decided purely.

`parse_text` is what the control plane calls on every file of its policy directory before it
streams the file to the mesh; the sidecar's adapter (`sidecar_tls.authz`) and `meshward authz`
decide with `policy.engine` on a `policy.request.Request`, and resolve mTLS modes with
`policy.peer_auth`.
"""

from __future__ import annotations

from policy.engine import Decision, PolicySet, Workload, decide
from policy.parse import PolicyFileError, Problem, parse_text
from policy.request import Request

__all__ = [
    "Decision",
    "PolicyFileError",
    "PolicySet",
    "Problem",
    "Request",
    "Workload",
    "decide",
    "parse_text",
]
