"""What a decision is asked about: one HTTP request or TCP connection, and its normalised attributes.

`Request` is the one request type of the mesh: the sidecar builds it from a connection and a
request head, `meshward authz check` from its flags, the decision tests from their vectors, and
`attributes()` is the one place it is normalised (Istio's principal without `spiffe://`, the
namespace taken from it, IPs parsed, the path as Envoy normalises it, headers by lowercase name).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import KW_ONLY, dataclass, field

from meshward_common.spiffe_id import SCHEME
from policy.matchers import Attributes, normalize_path, parse_ip


@dataclass(frozen=True)
class Request:
    """One request (HTTP) or connection (TCP); which workload it arrives at is the caller's.

    The connection's four facts are positional and `is_http` is required, so that no caller
    builds a request that silently looks like the other protocol or like an anonymous one.
    """

    source_principal: str  # the caller's verified SPIFFE ID, with or without spiffe://; "" if none
    source_ip: str
    destination_ip: str
    destination_port: int
    _: KW_ONLY
    is_http: bool
    sni: str = ""
    method: str = ""
    path: str = ""  # the request target as sent: the query is dropped and the path normalised
    host: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    remote_ip: str = ""  # original client; "" means source_ip (a sidecar trusts no proxy)


def attributes(request: Request) -> Attributes:
    """`request` normalised once, as every rule of a decision reads it."""
    principal = request.source_principal
    if principal.startswith(SCHEME):
        principal = principal[len(SCHEME) :]
    source_ip = parse_ip(request.source_ip)
    http = request.is_http
    return Attributes(
        principal=principal,
        source_namespace=namespace_of(principal),
        source_ip=source_ip,
        remote_ip=parse_ip(request.remote_ip) if request.remote_ip else source_ip,
        destination_ip=parse_ip(request.destination_ip),
        destination_port=request.destination_port,
        sni=request.sni,
        is_http=http,
        method=request.method if http else "",
        path=normalize_path(request.path) if http else "",
        host=request.host.lower() if http else "",
        # Lowercased on first use: only a rule on request.headers pays for it.
        headers=LowerHeaders(request.headers) if http else {},
    )


def namespace_of(principal: str) -> str:
    """The namespace in an Istio identity `<td>/ns/<namespace>/sa/<sa>`, or ""."""
    parts = principal.split("/")
    for i in range(1, len(parts) - 1):
        if parts[i] == "ns":
            return parts[i + 1]
    return ""


class LowerHeaders(Mapping[str, str]):
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
