"""`HOST:PORT` as flags and config files give it, with one meaning everywhere.

The meaning is Go's `net.SplitHostPort`, which Istio's and Kubernetes' address flags use: an IPv6
literal is bracketed (`[::1]:15012`; a bare `::1:15012` is ambiguous and refused), the host is
not empty, the port is a number. Port 0 ("any free port") makes sense only for an address to
listen on, so a destination must say `port_zero=False`.
"""

from __future__ import annotations

from meshward_common.errors import ConfigError


def parse_host_port(value: str, what: str, *, port_zero: bool = True) -> tuple[str, int]:
    """(host without brackets, port) of `value`, or a ConfigError naming `what`."""
    text = str(value).strip()
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        host = ""  # an unbracketed IPv6 literal: which colon ends the host is a guess
    low = 0 if port_zero else 1
    if (
        not sep
        or not host
        or "[" in host
        or "]" in host
        or not port_text.isdigit()
        or not low <= int(port_text) <= 65535
    ):
        example = "127.0.0.1:15012" if port_zero else "ca.example:15012"
        raise ConfigError(f"{what}: {value!r} is not HOST:PORT (e.g. {example}; IPv6 as [::1]:80)")
    return host, int(port_text)


def join_host_port(host: str, port: int) -> str:
    """The inverse of `parse_host_port`: IPv6 literals bracketed."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
