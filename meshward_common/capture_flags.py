"""istio-iptables' vocabulary: ports, ids and CIDRs as its flags spell them (`*` = all, `` = none).

Shared by the interception step (which applies them) and the injector (which writes them into the
init container from a Pod's `traffic.sidecar.istio.io/*` annotations and must refuse what the
init container would refuse).
"""

from __future__ import annotations

import ipaddress

from meshward_common.errors import ConfigError


def check_port(port: int, what: str) -> None:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError(f"interception: {what} {port!r} is not a TCP port (1-65535)")


def check_id(value: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"interception: {what} {value!r} is not a non-negative integer")


def check_cidr(cidr: str, what: str) -> None:
    try:
        net = ipaddress.ip_network(cidr, strict=False)
    except ValueError as exc:
        raise ConfigError(f"interception: {what} {cidr!r} is not a CIDR: {exc}") from exc
    if net.version != 4:
        raise ConfigError(
            f"interception: {what} {cidr!r} is IPv6; only the IPv4 nat table is written"
        )


def parse_port_list(text: str, what: str) -> tuple[int, ...] | None:
    """An istio-iptables port flag (`15090,15021`; `*` is None, all ports; `` is none)."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if "*" in items:
        return None
    ports_: list[int] = []
    for item in items:
        if not item.isdigit():
            raise ConfigError(f"interception: {what}: {item!r} is not a port number")
        port = int(item)
        check_port(port, what)
        ports_.append(port)
    return tuple(ports_)


def parse_cidr_list(text: str, what: str) -> tuple[str, ...] | None:
    """An istio-iptables CIDR flag (`10.0.0.0/8,192.168.1.1`; `*` is None, all; `` is none)."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if "*" in items:
        return None
    for item in items:
        check_cidr(item, what)
    return tuple(items)
