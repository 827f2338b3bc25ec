"""Which incoming headers an app copies onto its own calls, and what they tell about the caller.

Pure functions: the sidecars start and end spans, but only the app can tie its outgoing call to the
request that caused it, by copying these headers (Istio's bookinfo does exactly this).
"""

from __future__ import annotations

from collections.abc import Mapping

# Istio's list for bookinfo: W3C trace context, B3 (multi and single header), the request id.
TRACE_HEADERS: tuple[str, ...] = (
    "x-request-id",
    "traceparent",
    "tracestate",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "b3",
)

XFCC = "x-forwarded-client-cert"


def headers_to_forward(incoming: Mapping[str, str]) -> dict[str, str]:
    """The trace headers of `incoming` (any case), lowercased, to set on an outgoing call."""
    lowered = {k.lower(): v for k, v in incoming.items()}
    return {name: lowered[name] for name in TRACE_HEADERS if name in lowered}


def trace_id_of(incoming: Mapping[str, str]) -> str:
    """The trace id a request belongs to: W3C traceparent first, then B3; "" when untraced."""
    lowered = {k.lower(): v for k, v in incoming.items()}
    parts = lowered.get("traceparent", "").split("-")
    if len(parts) == 4 and len(parts[1]) == 32:
        return parts[1]
    if lowered.get("x-b3-traceid"):
        return lowered["x-b3-traceid"]
    single = lowered.get("b3", "")
    if single and single not in ("0", "1", "d"):
        return single.split("-", 1)[0]
    return ""


def parse_xfcc(value: str) -> dict[str, str]:
    """Envoy's x-forwarded-client-cert (`By=..;Hash=..;URI=..`), last element (the nearest hop)."""
    if not value:
        return {}
    last = value.split(",")[-1]
    fields: dict[str, str] = {}
    for part in last.split(";"):
        key, sep, val = part.partition("=")
        if sep:
            fields[key.strip()] = val.strip().strip('"')
    return fields


def caller_identity(incoming: Mapping[str, str]) -> dict[str, str]:
    """Who called (URI) and who the receiving sidecar is (By), from the XFCC header."""
    lowered = {k.lower(): v for k, v in incoming.items()}
    fields = parse_xfcc(lowered.get(XFCC, ""))
    return {"caller": fields.get("URI", ""), "callee": fields.get("By", "")}
