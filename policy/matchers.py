"""Constraints compiled into predicates over a request, once per policy update.

Istio's value syntax: exact, prefix `abc*`, suffix `*abc`, presence `*` (any non-empty value).
Hosts compare case-insensitively (RFC 4343), IP attributes by CIDR, ports as numbers. Nothing here
parses YAML or compiles a regex per request.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from policy.model import IP_ATTRIBUTES, PORT_ATTRIBUTES, Constraint

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Attributes:
    """What a decision looks at, normalised once per request."""

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


def string_matcher(value: str, *, fold_case: bool = False) -> Callable[[str], bool]:
    """One Istio string pattern as a predicate on a (possibly absent, i.e. empty) string."""
    if fold_case:
        value = value.lower()
    if value == "*":
        return bool
    if value.startswith("*"):
        suffix = value[1:]
        return lambda s: s.endswith(suffix)
    if value.endswith("*"):
        prefix = value[:-1]
        return lambda s: s.startswith(prefix)
    return value.__eq__


def _any_string(values: tuple[str, ...], fold_case: bool) -> Callable[[str], bool]:
    exact = frozenset(v.lower() if fold_case else v for v in values if "*" not in v)
    others = tuple(string_matcher(v, fold_case=fold_case) for v in values if "*" in v)
    if not others:
        return exact.__contains__
    return lambda s: s in exact or any(m(s) for m in others)


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
    "source.principal": lambda a: a.principal,
    "source.namespace": lambda a: a.source_namespace,
    "connection.sni": lambda a: a.sni,
    "request.host": lambda a: a.host,
    "request.method": lambda a: a.method,
    "request.path": lambda a: a.path,
}
