"""The answers the sidecar makes itself, in one table, and whose fault a malformed message is.

Envoy answers some requests without an upstream: a policy denial (403 `RBAC: access denied`), an
upstream it cannot reach or that reset before responding (503), an upstream that does not answer in
time (504 `upstream request timeout`), an upstream response it cannot parse (502), a request it
cannot parse (400). Each is a `LocalReply`; each codec serialises it (an
HTTP/1.1 response, HTTP/2 HEADERS and DATA, or for a gRPC call Envoy's trailers-only answer: HTTP
200 with `grpc-status` and `grpc-message`, the status mapped as Envoy maps HTTP statuses).

Faults are told apart the way h11 does: a message that breaks the protocol is the fault of the side
that sent it. A bad request from downstream is `BadRequest` (answered 400); a bad response from
upstream is `BadResponse` (answered 502), never an `InvalidRequest` of the caller.
"""

from __future__ import annotations

from enum import Enum
from typing import Final

from meshward_common.errors import InvalidRequest, MeshwardError


class MalformedMessage(MeshwardError):
    """Bytes that are not a valid HTTP message; which side sent them decides the answer."""


class BadRequest(MalformedMessage, InvalidRequest):
    """The downstream (the caller) sent a malformed request: its fault, answered 400."""


class BadResponse(MalformedMessage):
    """The upstream (the server) sent a malformed response: not the caller's fault, 502."""


class Kind(Enum):
    """(HTTP status, reason phrase, gRPC status as Envoy maps the HTTP status)."""

    RBAC_DENIED = (403, "Forbidden", 7)  # PERMISSION_DENIED
    BAD_REQUEST = (400, "Bad Request", 13)  # INTERNAL
    BAD_RESPONSE = (502, "Bad Gateway", 14)  # UNAVAILABLE
    UNAVAILABLE = (503, "Service Unavailable", 14)  # UNAVAILABLE
    TIMEOUT = (504, "Gateway Timeout", 14)  # UNAVAILABLE (Envoy's httpToGrpcStatus, gRPC's table)


class LocalReply:
    """One answer the sidecar makes: its kind and the text (the body, or the grpc-message)."""

    __slots__ = ("grpc_status", "message", "phrase", "status")

    def __init__(self, kind: Kind, message: str) -> None:
        self.status: int = kind.value[0]
        self.phrase: str = kind.value[1]
        self.grpc_status: int = kind.value[2]
        self.message = message


DENIED_MESSAGE: Final = "RBAC: access denied"
# How long a request waits for its upstream's response head once the request has been sent
# whole: Envoy's default route timeout. A gRPC call is bounded by the caller's grpc-timeout only
# (a stream may rightly last hours; Istio honours grpc-timeout with no maximum).
REQUEST_TIMEOUT_S: Final = 15.0
RBAC_DENIED: Final = LocalReply(Kind.RBAC_DENIED, DENIED_MESSAGE)


def bad_request(reason: str) -> LocalReply:
    return LocalReply(Kind.BAD_REQUEST, reason)


def bad_response(reason: str) -> LocalReply:
    return LocalReply(Kind.BAD_RESPONSE, reason)


def upstream_unavailable(reason: str) -> LocalReply:
    """Outbound: the peer sidecar could not be reached, or reset before responding."""
    return LocalReply(Kind.UNAVAILABLE, f"upstream connect error: {reason}")


def upstream_timeout() -> LocalReply:
    """No response (head, or for gRPC the whole call) within the request's timeout."""
    return LocalReply(Kind.TIMEOUT, "upstream request timeout")


def app_unreachable(reason: str) -> LocalReply:
    """Inbound: the app could not be reached, or reset before responding."""
    return LocalReply(Kind.UNAVAILABLE, f"app not reachable: {reason}")
