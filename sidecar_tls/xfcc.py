"""`x-forwarded-client-cert` in Envoy's format, set by the inbound sidecar.

Envoy (`forward_client_cert_details: SANITIZE_SET`, Istio's default for sidecars): any XFCC the caller
sent is removed and replaced with `By=<server ID>;Hash=<sha256 hex of the client leaf DER>;URI=<client
ID>`. The caller cannot forge it: only the sidecar that terminated its mTLS connection writes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

HEADER: Final = "x-forwarded-client-cert"


def format_xfcc(server_id: str, client_cert_sha256: str, client_id: str) -> str:
    return f"By={server_id};Hash={client_cert_sha256};URI={client_id}"


def parse_xfcc(value: str) -> list[dict[str, str]]:
    """Elements (comma-separated) of key=value pairs (semicolon-separated). Values with ',', ';'
    or '=' would be quoted by Envoy; SPIFFE IDs and hex hashes never contain them."""
    elements = []
    for element in value.split(","):
        pairs: dict[str, str] = {}
        for pair in element.split(";"):
            key, eq, val = pair.strip().partition("=")
            if eq:
                pairs[key] = val.strip('"')
        elements.append(pairs)
    return elements


def sanitize_set(headers: Sequence[tuple[str, str]], value: str | None) -> list[tuple[str, str]]:
    """Remove every incoming XFCC; set ours when the caller was authenticated by mTLS."""
    out = [(n, v) for n, v in headers if n.lower() != HEADER]
    if value is not None:
        out.append((HEADER, value))
    return out
