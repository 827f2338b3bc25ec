"""policy: Istio AuthorizationPolicy and PeerAuthentication, parsed and decided purely.

`validate_text` is what the control plane calls on every file of its policy directory before it
streams the file to the mesh; the sidecar's adapter (`sidecar_tls.authz`) and `meshward authz`
build on `policy.engine` and `policy.peer_auth`.
"""

from __future__ import annotations

from policy.engine import Decision, PolicySet, Request, Workload, decide
from policy.model import Resource
from policy.parse import PolicyFileError, Problem, parse_text

__all__ = [
    "Decision",
    "PolicyFileError",
    "PolicySet",
    "Problem",
    "Request",
    "Workload",
    "decide",
    "parse_text",
    "validate_text",
]


def validate_text(text: str, source: str) -> tuple[Resource, ...]:
    """The policies in `text`, or PolicyFileError (a ConfigError) whose message is every
    `source:line: field: reason`, `; `-joined, and whose `.problems` lists them one by one."""
    return parse_text(text, source)
