"""Whether a request is traced, Istio's way, and the trace context an untraced request carries on.

Pure functions over the incoming headers (a lookup by lowercase name) and a random draw:
- `x-client-trace-id` or `x-envoy-force-trace` forces sampling (Envoy's forced tracing);
- otherwise the caller's decision wins (parent-based): a W3C `traceparent` with the sampled flag,
  or B3 (`b3` single header, `x-b3-sampled`, `x-b3-flags: 1`) saying sampled or not;
- otherwise this hop decides: `percent` of requests (Istio `defaultConfig.tracing.sampling`).

An unsampled request still propagates context (Envoy makes a span id per hop even when not
sampling): `unsampled_headers` gives the W3C and B3 headers with the not-sampled flag, continuing the
caller's trace id when there is one, so the next hops make the same decision. No SDK object is made.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from typing import Final, NamedTuple

Lookup = Callable[[str], "str | None"]

_TRACEPARENT_RE: Final = re.compile(
    r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?"
)
_HEX_ID_RE: Final = re.compile(r"[0-9a-f]{16}|[0-9a-f]{32}")
_ZERO_TRACE: Final = "0" * 32
_ZERO_SPAN: Final = "0" * 16
FORCE_HEADERS: Final = ("x-client-trace-id", "x-envoy-force-trace")
# Every header `decide` reads: a request with none of them is decided by the percentage alone.
CONTEXT_HEADERS: Final = frozenset(
    {"traceparent", "b3", "x-b3-traceid", "x-b3-sampled", "x-b3-flags", *FORCE_HEADERS}
)


class Decision(NamedTuple):
    sampled: bool
    trace_id: str | None  # the caller's trace id (32 hex), None when this hop starts the trace
    forced: bool = False  # by x-client-trace-id / x-envoy-force-trace
    inherited: bool = False  # the caller's context already says sampled or not


class _Parent(NamedTuple):
    trace_id: str | None
    sampled: bool | None  # None: the caller deferred the decision


def parse_traceparent(value: str) -> tuple[str, str, bool] | None:
    """(trace id, parent span id, sampled) of a valid W3C traceparent, else None."""
    m = _TRACEPARENT_RE.fullmatch(value.strip())
    if m is None:
        return None
    version, trace_id, span_id, flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == _ZERO_TRACE:
        return None
    if span_id == _ZERO_SPAN:
        return None
    return trace_id, span_id, bool(int(flags, 16) & 1)


def _b3_sampled(flag: str) -> bool | None:
    flag = flag.strip().lower()
    if flag in ("1", "d", "true"):
        return True
    if flag in ("0", "false"):
        return False
    return None


def _b3_trace_id(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip().lower()
    if _HEX_ID_RE.fullmatch(value) is None or not value.strip("0"):
        return None
    return value.rjust(32, "0")  # 64-bit B3 ids widen to W3C's 128 bits


def _parent(get: Lookup) -> _Parent:
    traceparent = get("traceparent")
    if traceparent is not None:
        parsed = parse_traceparent(traceparent)
        if parsed is not None:
            return _Parent(parsed[0], parsed[2])
    single = get("b3")
    if single is not None:
        parts = single.split("-")
        if len(parts) == 1:  # only a sampling state ("0", "1", "d")
            return _Parent(None, _b3_sampled(parts[0]))
        trace_id = _b3_trace_id(parts[0])
        if trace_id is not None:
            return _Parent(trace_id, _b3_sampled(parts[2]) if len(parts) > 2 else None)
    flags = get("x-b3-flags")
    sampled = True if flags is not None and flags.strip() == "1" else None
    if sampled is None:
        flag = get("x-b3-sampled")
        sampled = _b3_sampled(flag) if flag is not None else None
    return _Parent(_b3_trace_id(get("x-b3-traceid")), sampled)


def decide(get: Lookup, percent: float, draw: float) -> Decision:
    """The sampling decision for one request. `draw`: uniform in [0, 1) (random.random())."""
    parent = _parent(get)
    if any(get(name) is not None for name in FORCE_HEADERS):
        return Decision(True, parent.trace_id, forced=True)
    if parent.sampled is not None:
        return Decision(parent.sampled, parent.trace_id, inherited=parent.trace_id is not None)
    return Decision(draw * 100.0 < percent, parent.trace_id)


def new_span_id() -> str:
    return f"{random.getrandbits(64) or 1:016x}"


def new_trace_id() -> str:
    return f"{random.getrandbits(128) or 1:032x}"


def fresh_ids() -> tuple[str, str, str]:
    """(trace id, span id, 32 hex digits for a request id) from one random draw."""
    # Identifiers, not secrets (Envoy's are not either): the fast generator. getrandbits, not
    # randbytes, which is Python code around it.
    h = random.getrandbits(320).to_bytes(40, "little").hex()
    trace_id = h[:32]
    if trace_id == _ZERO_TRACE:  # invalid in W3C; one chance in 2**128
        trace_id = new_trace_id()
    return trace_id, h[32:48] if h[32:48] != _ZERO_SPAN else new_span_id(), h[48:]


def unsampled_headers(
    trace_id: str | None, span_id: str, *, b3_single: bool
) -> list[tuple[str, str]]:
    """The context headers of a hop that is not sampled: W3C flags 00, B3 sampled 0."""
    trace_id = trace_id or new_trace_id()
    out = [
        ("traceparent", f"00-{trace_id}-{span_id}-00"),
        ("x-b3-traceid", trace_id),
        ("x-b3-spanid", span_id),
        ("x-b3-sampled", "0"),
    ]
    if b3_single:
        out.append(("b3", f"{trace_id}-{span_id}-0"))
    return out
