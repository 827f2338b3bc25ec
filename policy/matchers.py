"""Constraints compiled into predicates over a request, once per policy update.

Istio's value syntax: exact, prefix `abc*`, suffix `*abc`, presence `*` (any non-empty value).
Hosts compare case-insensitively (RFC 4343), IP attributes by CIDR, ports as numbers. Nothing here
parses YAML or compiles a regex per request.
"""

from __future__ import annotations

import functools
import ipaddress
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from policy.model import IP_ATTRIBUTES, PORT_ATTRIBUTES, Constraint

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(slots=True)
class Attributes:
    """What a decision looks at, normalised once per request (slotted, not frozen: it is made
    per request on the hot path, and nothing keeps it)."""

    principal: str = ""  # caller's SPIFFE ID without "spiffe://"; "" if not authenticated
    source_namespace: str = ""
    source_ip: IpAddress | None = None
    remote_ip: IpAddress | None = None
    destination_ip: IpAddress | None = None
    destination_port: int = 0
    sni: str = ""
    is_http: bool = True
    method: str = ""
    path: str = ""  # without query string or fragment, as Istio's `paths` match
    host: str = ""  # lowercase
    headers: Mapping[str, str] = field(default_factory=dict)  # lowercase names


Predicate = Callable[[Attributes], bool]


_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PERCENT_RE = re.compile(r"%([0-9A-Fa-f]{2})")


def normalize_path(target: str) -> str:
    """The path policies match, as Envoy's `normalize_path` gives Istio (RFC 3986 6.2.2): no
    query or fragment, unreserved characters percent-decoded, escapes uppercased, `.` and `..`
    segments removed. Without it `/public/../admin` or `/%61dmin` would slip past a
    DENY on `/admin*` that the app itself would then serve."""
    path = target.split("?", 1)[0].split("#", 1)[0]
    if "%" in path:
        path = _PERCENT_RE.sub(_decode_unreserved, path)
    if "/." not in path:
        return path  # the common case: nothing to remove
    out: list[str] = []
    segments = path.split("/")
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg == ".":
            if last:
                out.append("")
        elif seg == "..":
            if len(out) > 1:
                out.pop()
            if last:
                out.append("")
        else:
            out.append(seg)
    result = "/".join(out)
    return result if result.startswith("/") or not path.startswith("/") else "/" + result


def _decode_unreserved(m: re.Match[str]) -> str:
    char = chr(int(m.group(1), 16))
    return char if char in _UNRESERVED else "%" + m.group(1).upper()


@functools.lru_cache(maxsize=4096)
def parse_ip(text: str) -> IpAddress | None:
    """An address, or None for "" or garbage. Cached: a sidecar sees the same few peers."""
    try:
        return ipaddress.ip_address(text) if text else None
    except ValueError:
        return None


def _any_string(values: tuple[str, ...], fold_case: bool) -> Callable[[str], bool]:
    """One predicate for a list of patterns: a set lookup plus one C-level startswith/endswith
    over all prefixes/suffixes, so the cost hardly grows with the list."""
    if fold_case:
        values = tuple(v.lower() for v in values)
    if "*" in values:
        return bool
    exact = frozenset(v for v in values if "*" not in v)
    prefixes = tuple(v[:-1] for v in values if v.endswith("*"))
    suffixes = tuple(v[1:] for v in values if v.startswith("*"))
    if not prefixes and not suffixes:
        return exact.__contains__
    return lambda s: s in exact or s.startswith(prefixes) or s.endswith(suffixes)


def _any_ip(values: tuple[str, ...]) -> Callable[[IpAddress | None], bool]:
    networks = tuple(ipaddress.ip_network(v, strict=False) for v in values)
    return lambda ip: ip is not None and any(ip in n for n in networks)


def compile_constraint(c: Constraint) -> Predicate:
    """The predicate for one constraint, with its negation folded in."""
    positive = _positive(c)
    if c.negate:
        return lambda a: not positive(a)
    return positive


def _positive(c: Constraint) -> Predicate:
    attr = c.attribute
    if attr in IP_ATTRIBUTES:
        match_ip = _any_ip(c.values)
        if attr == "source.ip":
            return lambda a: match_ip(a.source_ip)
        if attr == "remote.ip":
            return lambda a: match_ip(a.remote_ip)
        return lambda a: match_ip(a.destination_ip)
    if attr in PORT_ATTRIBUTES:
        ports = frozenset(int(v) for v in c.values)
        return lambda a: a.destination_port in ports
    if attr == "request.principal":
        # No end-user authentication exists yet, so no request carries a request principal.
        return lambda a: False
    if attr == "request.headers":
        name = c.header
        if "*" in c.values:  # presence: Envoy's present_match, true even for an empty value
            return lambda a: name in a.headers
        match = _any_string(c.values, False)
        return lambda a: name in a.headers and match(a.headers[name])
    match = _any_string(c.values, attr == "request.host")
    getter = _STRING_GETTERS[attr]
    # An absent value is "" (no principal on plaintext, no SNI): no pattern matches it, not even
    # `*`, because patterns are never empty.
    return lambda a: match(getter(a))


_STRING_GETTERS: Mapping[str, Callable[[Attributes], str]] = {
    "source.principal": operator.attrgetter("principal"),
    "source.namespace": operator.attrgetter("source_namespace"),
    "connection.sni": operator.attrgetter("sni"),
    "request.host": operator.attrgetter("host"),
    "request.method": operator.attrgetter("method"),
    "request.path": operator.attrgetter("path"),
}
