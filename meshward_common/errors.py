"""One error hierarchy for the whole mesh.

Each component raises these; each boundary translates them once (gRPC status codes in
`meshward_common.grpc_status`, HTTP statuses in the sidecar). A refusal that is part of normal
operation is one of these, never a bare Exception.
"""

from __future__ import annotations


class MeshwardError(Exception):
    """Base of every error meshward raises on purpose."""


class ConfigError(MeshwardError):
    """A configuration file, flag or state directory is unusable. The message says which and why."""


class InvalidRequest(MeshwardError):
    """The caller sent something malformed: a bad CSR, TTL, header or argument."""


class Unauthenticated(MeshwardError):
    """The caller presented no credential, or one that does not verify."""


class PermissionDenied(MeshwardError):
    """The caller is authenticated but not entitled to what it asked for.

    The message is the caller's answer: it names only the caller and what it asked for.
    `audit_detail` is what the operator's audit log adds (e.g. the nodes where an identity is
    registered), never sent to the caller: a node learns nothing about the others."""

    def __init__(self, message: str, audit_detail: str = "") -> None:
        super().__init__(message)
        self.audit_detail = audit_detail


class RateLimited(MeshwardError):
    """The caller asked too often."""


class NotReady(MeshwardError):
    """The component cannot serve yet (no SVID, no bundle, CA unreachable)."""


class SpiffeIdError(InvalidRequest):
    """A string is not a valid SPIFFE ID."""


class SvidError(MeshwardError):
    """A certificate breaks the X.509-SVID rules or does not chain to the bundle.

    `problems` lists every rule broken, so one error tells the whole story.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))
