"""The one table between meshward errors and gRPC status codes, read both ways.

Servers answer an error with `status_for` (through `meshward_common.grpc_boundary`); clients turn
a peer's status back into an error with `error_for`. Both read `STATUS_OF`, so a code one side
sends is the error the other side raises: a rate-limited agent sees `RateLimited`, not a CA that
is "not ready".
"""

from __future__ import annotations

import grpc

from meshward_common import errors

STATUS_OF: tuple[tuple[type[errors.MeshwardError], grpc.StatusCode], ...] = (
    (errors.InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.RateLimited, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.NotReady, grpc.StatusCode.UNAVAILABLE),
    (errors.ConfigError, grpc.StatusCode.FAILED_PRECONDITION),
)

# A ConfigError is this process's own unusable configuration, which stops it; the peer's broken
# configuration is, seen from here, a peer that cannot serve yet. So is every code not in the
# table (UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, UNKNOWN, ...): try again later.
_ERROR_OF: dict[grpc.StatusCode, type[errors.MeshwardError]] = {
    code: cls for cls, code in STATUS_OF if cls is not errors.ConfigError
}


def status_for(exc: errors.MeshwardError) -> grpc.StatusCode:
    for cls, code in STATUS_OF:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


def error_for(code: grpc.StatusCode | None, detail: str) -> errors.MeshwardError:
    """The error a client raises for a peer's status `code`; `detail` says who answered what."""
    cls = _ERROR_OF.get(code, errors.NotReady) if code is not None else errors.NotReady
    return cls(detail)
