"""`meshward traces`: the latest traces from Jaeger's query API, drawn as a waterfall in the terminal.

Jaeger built from the Go module (`make jaeger`) has no web UI, so this is the way to look at traces
without one. `render_trace` is a pure function of Jaeger's JSON (`/api/traces`); the command only
fetches and prints.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import click

from meshward_common.errors import ConfigError, NotReady
from meshward_common.ports import JAEGER_QUERY

QUERY_ENV = "MESHWARD_JAEGER_QUERY"
DEFAULT_QUERY_URL = f"http://127.0.0.1:{JAEGER_QUERY}"
JAEGER_SELF = "jaeger"  # Jaeger traces itself under this service; not part of the mesh


@dataclass(frozen=True)
class SpanRow:
    """One span, flattened from Jaeger's JSON into what the waterfall shows."""

    span_id: str
    parent_id: str
    service: str
    operation: str
    kind: str
    start_us: int
    duration_us: int
    status: str
    peer: str
    error: bool


def _tags(raw: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    return {str(t["key"]): str(t.get("value", "")) for t in raw}


def span_rows(trace: Mapping[str, Any]) -> list[SpanRow]:
    processes = trace.get("processes", {})
    rows = []
    for span in trace.get("spans", []):
        tags = _tags(span.get("tags", []))
        parents = [
            r["spanID"]
            for r in span.get("references", [])
            if r.get("refType") == "CHILD_OF" and r.get("traceID") == span.get("traceID")
        ]
        error = tags.get("error") == "true" or tags.get("otel.status_code") == "ERROR"
        status = tags.get("http.status_code", "ERR" if error else "-")
        operation = str(span.get("operationName", ""))
        if "grpc.path" in tags:  # a gRPC call: its method, and grpc-status beside the HTTP one
            operation += f" {tags['grpc.path']}"
            if "grpc.status_code" in tags:
                status += f" grpc-status={tags['grpc.status_code']}"
        rows.append(
            SpanRow(
                span_id=str(span["spanID"]),
                parent_id=parents[0] if parents else "",
                service=str(processes.get(span.get("processID"), {}).get("serviceName", "?")),
                operation=operation,
                kind=tags.get("span.kind", ""),
                start_us=int(span.get("startTime", 0)),
                duration_us=int(span.get("duration", 0)),
                status=status,
                peer=tags.get("peer.principal", ""),
                error=error,
            )
        )
    return rows


def tree_order(rows: Sequence[SpanRow]) -> list[tuple[int, SpanRow]]:
    """Depth-first, children by start time; spans whose parent is missing count as roots."""
    ids = {r.span_id for r in rows}
    children: dict[str, list[SpanRow]] = {}
    for r in rows:
        children.setdefault(r.parent_id if r.parent_id in ids else "", []).append(r)
    out: list[tuple[int, SpanRow]] = []
    stack = [(0, r) for r in sorted(children.get("", []), key=lambda r: r.start_us, reverse=True)]
    while stack:
        depth, row = stack.pop()
        out.append((depth, row))
        kids = sorted(children.get(row.span_id, []), key=lambda r: r.start_us, reverse=True)
        stack.extend((depth + 1, k) for k in kids)
    return out


def _ms(us: int) -> str:
    return f"{us / 1000:.2f} ms" if us < 10_000_000 else f"{us / 1_000_000:.1f} s"


def _bar(start: int, duration: int, t0: int, total: int, width: int) -> str:
    total = max(total, 1)
    left = min(width - 1, (start - t0) * width // total)
    size = max(1, min(width - left, -(-duration * width // total)))
    return "|" + " " * left + "#" * size + " " * (width - left - size) + "|"


def render_trace(trace: Mapping[str, Any], *, bar_width: int = 24) -> list[str]:
    rows = span_rows(trace)
    if not rows:
        return []
    ordered = tree_order(rows)
    t0 = min(r.start_us for r in rows)
    total = max(r.start_us + r.duration_us for r in rows) - t0
    root = ordered[0][1]
    when = datetime.fromtimestamp(t0 / 1e6, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    services = len({r.service for r in rows})
    lines = [
        f"trace {trace.get('traceID', '?')}  {root.service} {root.operation}  {_ms(total)}  "
        f"{len(rows)} spans, {services} services  {when}"
    ]
    names = [("  " * d) + r.service for d, r in ordered]
    name_w = max(len("service"), *(len(n) for n in names))
    op_w = max(len("operation"), *(len(r.operation) for _, r in ordered))
    lines.append(
        f"  {'service':<{name_w}}  {'kind':<6}  {'operation':<{op_w}}  {'duration':>10}  "
        f"{'status':<6}  {'timeline':<{bar_width + 2}}  peer"
    )
    for name, (_, r) in zip(names, ordered, strict=True):
        status = r.status + ("!" if r.error else "")
        bar = _bar(r.start_us, r.duration_us, t0, total, bar_width)
        lines.append(
            f"  {name:<{name_w}}  {r.kind:<6}  {r.operation:<{op_w}}  {_ms(r.duration_us):>10}  "
            f"{status:<6}  {bar}  {r.peer or '-'}"
        )
    return lines


def latest(traces: Sequence[Mapping[str, Any]], limit: int) -> list[Mapping[str, Any]]:
    """Newest first (by earliest span start), one entry per trace ID."""
    by_id: dict[str, Mapping[str, Any]] = {}
    for t in traces:
        if t.get("spans"):
            by_id.setdefault(str(t.get("traceID")), t)

    def started(t: Mapping[str, Any]) -> int:
        return min(int(s.get("startTime", 0)) for s in t["spans"])

    return sorted(by_id.values(), key=started, reverse=True)[:limit]


class JaegerQuery:
    """The few calls of Jaeger's HTTP query API (`/api/services`, `/api/traces`) we need."""

    def __init__(self, base_url: str, timeout_s: float = 5.0) -> None:
        parsed = urllib.parse.urlparse(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigError(f"Jaeger query URL {base_url!r} must look like http://host:16686")
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s

    def _get(self, path: str, params: Mapping[str, str | int] | None = None) -> Any:
        url = self.base_url + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as resp:  # noqa: S310
                return json.load(resp)
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise NotReady(f"cannot reach Jaeger's query API at {self.base_url}: {reason}") from exc
        except ValueError as exc:
            raise NotReady(f"Jaeger at {self.base_url} answered {path} with non-JSON") from exc

    def services(self) -> list[str]:
        return sorted(str(s) for s in (self._get("/api/services").get("data") or []))

    def traces(self, service: str, limit: int, lookback: str) -> list[Mapping[str, Any]]:
        params: dict[str, str | int] = {"service": service, "limit": limit, "lookback": lookback}
        return list(self._get("/api/traces", params).get("data") or [])


def fetch_latest(
    query: JaegerQuery, service: str | None, limit: int, lookback: str
) -> list[Mapping[str, Any]]:
    services = [service] if service else [s for s in query.services() if s != JAEGER_SELF]
    found: list[Mapping[str, Any]] = []
    for s in services:
        found.extend(query.traces(s, limit, lookback))
    return latest(found, limit)


@click.command("traces")
@click.option("--service", "-s", help="Only traces through this service (e.g. reviews.default).")
@click.option("--limit", "-n", default=5, show_default=True, type=click.IntRange(1, 1000))
@click.option("--lookback", default="1h", show_default=True, help="How far back: 15m, 1h, 2d…")
@click.option(
    "--query-url",
    default=lambda: os.environ.get(QUERY_ENV, DEFAULT_QUERY_URL),
    show_default=f"${QUERY_ENV} or {DEFAULT_QUERY_URL}",
    help="Jaeger's query API.",
)
def traces(service: str | None, limit: int, lookback: str, query_url: str) -> None:
    """Print the latest traces from Jaeger as waterfalls (service, operation, duration, status, peer
    identity per span)."""
    try:
        found = fetch_latest(JaegerQuery(query_url), service, limit, lookback)
    except (NotReady, ConfigError) as exc:
        raise click.ClickException(str(exc)) from exc
    if not found:
        where = f"service {service!r}" if service else "any service"
        click.echo(f"no traces for {where} in the last {lookback} at {query_url}")
        return
    for i, trace in enumerate(found):
        if i:
            click.echo("")
        for line in render_trace(trace):
            click.echo(line)
