"""The sidecar process must not load the heavy packages it has no use for (issue 4, RSS budget):
grpc and the spiffe package (~20 MB: the agent streams use sidecar_tls.workload_api.grpc_stream), the grpc OTLP
exporter, requests. Checked in a fresh interpreter that imports and builds what `sidecar run` does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.footprint import UNWANTED

REPO = Path(__file__).resolve().parents[2]

_PROBE = """
import json, sys
import sidecar_tls.cli
from sidecar_tls.sidecar import Sidecar, SidecarConfig
Sidecar(SidecarConfig(agent_socket="/nonexistent", pod_ip="127.0.0.1", workload="w-v1",
                      namespace="ns", otlp_endpoint="http://127.0.0.1:9"))
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def test_sidecar_process_loads_neither_grpc_nor_spiffe() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], cwd=REPO, capture_output=True, text=True, check=True
    )
    loaded = set(json.loads(out.stdout))
    assert {"sidecar_tls", "h2", "opentelemetry"} <= loaded  # the probe did build a sidecar
    assert not loaded & set(UNWANTED)
