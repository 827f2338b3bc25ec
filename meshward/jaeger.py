"""Where the Jaeger binary is and how meshward configures it (the local mesh and the tests alike).

The binary is looked up in the same order by `meshward up`, `make jaeger` and the test harness:
`$MESHWARD_JAEGER`, then `jaeger` on PATH, then `tools/bin/jaeger` (built by
`scripts/build_jaeger.sh` from the pinned Go module in `tools/`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOOLS_JAEGER = REPO / "tools" / "bin" / "jaeger"
JAEGER_VERSION = "v1.76.0"


def find_jaeger(environ: Mapping[str, str] | None = None) -> str | None:
    env = os.environ if environ is None else environ
    given = env.get("MESHWARD_JAEGER")
    if given:
        return given
    on_path = shutil.which("jaeger", path=env.get("PATH"))
    if on_path:
        return on_path
    return str(TOOLS_JAEGER) if TOOLS_JAEGER.exists() else None


def ensure_jaeger() -> str:
    """The Jaeger binary, building it from the tools Go module if there is none yet (minutes, once)."""
    found = find_jaeger()
    if found:
        return found
    subprocess.run(["bash", str(REPO / "scripts" / "build_jaeger.sh"), JAEGER_VERSION], check=True)
    return str(TOOLS_JAEGER)


@dataclass(frozen=True)
class JaegerListen:
    """The addresses one Jaeger instance listens on ("host:port" each)."""

    otlp_http: str  # OTLP/HTTP receiver (the sidecars post spans to /v1/traces)
    query_http: str
    query_grpc: str


_CONFIG = """\
# Jaeger v2 all-in-one, spans kept in memory; written by meshward.
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
extensions:
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: "{query_http}"
    grpc:
      endpoint: "{query_grpc}"
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: {max_traces}
receivers:
  otlp:
    protocols:
      http:
        endpoint: "{otlp_http}"
processors:
  batch:
    timeout: {batch_timeout_ms}ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
"""


def jaeger_config(listen: JaegerListen, *, max_traces: int, batch_timeout_ms: int) -> str:
    """Jaeger's YAML config: OTLP receiver -> batch -> in-memory store -> query API."""
    return _CONFIG.format(
        otlp_http=listen.otlp_http,
        query_http=listen.query_http,
        query_grpc=listen.query_grpc,
        max_traces=max_traces,
        batch_timeout_ms=batch_timeout_ms,
    )


def jaeger_argv(binary: str, config_path: str) -> list[str]:
    return [binary, "--config", config_path]
