"""SPIFFE IDs, parsed strictly per the SPIFFE ID spec.

The `spiffe` package's parser is laxer than the spec (it accepts a trailing newline, has no length
limits), so meshward checks identities with this module wherever one crosses a trust boundary.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from meshward_common.errors import SpiffeIdError

SCHEME = "spiffe://"
MAX_ID_LENGTH = 2048
MAX_TRUST_DOMAIN_LENGTH = 255
DEFAULT_TRUST_DOMAIN = "cluster.local"

_TRUST_DOMAIN_RE = re.compile(r"[a-z0-9._-]+")
_SEGMENT_RE = re.compile(r"[A-Za-z0-9._-]+")
# Kubernetes names: what a namespace, service account or node name may be.
_K8S_NAME_RE = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")


def validate_trust_domain(name: str) -> str:
    if not name:
        raise SpiffeIdError("trust domain is empty")
    if len(name) > MAX_TRUST_DOMAIN_LENGTH:
        raise SpiffeIdError(f"trust domain longer than {MAX_TRUST_DOMAIN_LENGTH} characters")
    if _TRUST_DOMAIN_RE.fullmatch(name) is None:
        raise SpiffeIdError(
            f"trust domain {name!r} has characters other than lowercase letters, digits, '.', '-', '_'"
        )
    return name


def validate_name(kind: str, value: str) -> str:
    """Check a namespace, service account or node name (Kubernetes DNS-1123 rules)."""
    if _K8S_NAME_RE.fullmatch(value) is None:
        shown = value if len(value) <= 40 else f"{value[:35]}..."  # never a whole long value
        raise SpiffeIdError(f"{kind} {shown!r} is not a valid name (lowercase DNS-1123)")
    return value


@dataclass(frozen=True, order=True)
class SpiffeId:
    trust_domain: str
    path: str  # "" or "/seg/seg..."

    def __post_init__(self) -> None:
        validate_trust_domain(self.trust_domain)
        _validate_path(self.path)
        if len(str(self)) > MAX_ID_LENGTH:
            raise SpiffeIdError(f"SPIFFE ID longer than {MAX_ID_LENGTH} bytes")

    def __str__(self) -> str:
        return f"{SCHEME}{self.trust_domain}{self.path}"

    @classmethod
    def parse(cls, value: str) -> SpiffeId:
        if not isinstance(value, str):
            raise SpiffeIdError("SPIFFE ID must be a string")
        if len(value.encode()) > MAX_ID_LENGTH:
            raise SpiffeIdError(f"SPIFFE ID longer than {MAX_ID_LENGTH} bytes")
        if not value.startswith(SCHEME):
            raise SpiffeIdError(f"{value!r} does not start with {SCHEME}")
        rest = value[len(SCHEME) :]
        td, slash, path = rest.partition("/")
        return cls(td, slash + path if slash else "")

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(self.path.split("/")[1:]) if self.path else ()

    def member_of(self, trust_domain: str) -> bool:
        return self.trust_domain == trust_domain


def _validate_path(path: str) -> None:
    if path == "":
        return
    if not path.startswith("/"):
        raise SpiffeIdError("path must start with '/'")
    for segment in path.split("/")[1:]:
        if segment == "":
            raise SpiffeIdError("path has an empty segment or a trailing '/'")
        if segment in (".", ".."):
            raise SpiffeIdError("path has a '.' or '..' segment")
        if _SEGMENT_RE.fullmatch(segment) is None:
            raise SpiffeIdError(
                f"path segment {segment!r} has characters other than letters, digits, '.', '-', '_'"
            )


# The three kinds of identity in a meshward mesh.


def workload_id(trust_domain: str, namespace: str, service_account: str) -> SpiffeId:
    """Istio's workload identity: spiffe://<td>/ns/<namespace>/sa/<service-account>."""
    validate_name("namespace", namespace)
    validate_name("service account", service_account)
    return SpiffeId(trust_domain, f"/ns/{namespace}/sa/{service_account}")


def node_id(trust_domain: str, node: str) -> SpiffeId:
    """A node agent's identity. Outside the /ns/ space, so no workload can ever be given it."""
    validate_name("node name", node)
    return SpiffeId(trust_domain, f"/meshward/node/{node}")


def control_plane_id(trust_domain: str) -> SpiffeId:
    return SpiffeId(trust_domain, "/meshward/control-plane")


def parse_workload_id(sid: SpiffeId) -> tuple[str, str] | None:
    """(namespace, service account) of a workload ID, or None for any other ID."""
    seg = sid.segments
    if len(seg) == 4 and seg[0] == "ns" and seg[2] == "sa":
        return seg[1], seg[3]
    return None


def parse_node_id(sid: SpiffeId) -> str | None:
    seg = sid.segments
    if len(seg) == 3 and seg[:2] == ("meshward", "node"):
        return seg[2]
    return None
