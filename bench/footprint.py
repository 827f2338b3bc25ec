"""The sidecar process's memory footprint (issue 4: RSS <= 35 MB per sidecar under load).

A fresh interpreter imports what `meshward sidecar run` loads, one group at a time, printing the
RSS each group adds (VmRSS, split into RssAnon: heaps; RssFile: mapped code), then starts a real
`Sidecar` (free ports, uvloop, metrics and tracing on, no agent: it keeps retrying) and prints the
total, plus the heavy packages that should *not* be in the process.

    python -m bench footprint        # or: python -m bench.footprint
"""

from __future__ import annotations

import importlib
import json
import re
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Import groups in the order the sidecar meets them; each line's delta is what that group adds.
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("asyncio + ssl + uvloop", ("asyncio", "ssl", "uvloop")),
    ("cryptography (x509, keys)", ("cryptography.x509", "cryptography.hazmat.primitives.asymmetric.ec")),
    ("h2 + agent streams", ("h2.connection", "sidecar_tls.workload_api.mesh_state", "sidecar_tls.identity")),
    ("opentelemetry sdk + OTLP/HTTP", ("opentelemetry.sdk.trace", "sidecar_tls.telemetry.otlp_http")),
    ("prometheus_client", ("prometheus_client",)),
    ("sidecar_tls.telemetry.metrics", ("sidecar_tls.telemetry.metrics",)),
    ("sidecar_tls.telemetry.tracing", ("sidecar_tls.telemetry.tracing",)),
    ("sidecar_tls.sidecar (data path)", ("sidecar_tls.sidecar",)),
    ("sidecar_tls.cli (click)", ("sidecar_tls.cli",)),
)  # fmt: skip
# Packages the sidecar process must not load (each costs megabytes and the data path needs none).
# It does load protobuf (`google`: the Workload API's wire messages), PyYAML (the policy documents
# of the mesh state) and click (its command line): those are its own.
UNWANTED = ("grpc", "spiffe", "aiohttp", "requests", "pyasn1")


def _status() -> dict[str, float]:
    text = Path("/proc/self/status").read_text()
    out = {}
    for key in ("VmRSS", "RssAnon", "RssFile"):
        m = re.search(rf"{key}:\s+(\d+) kB", text)
        out[key] = int(m.group(1)) / 1024 if m else 0.0
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child() -> None:
    """Runs in the fresh interpreter: prints one JSON line per step."""
    print(json.dumps({"step": "bare python", **_status()}), flush=True)
    for name, modules in GROUPS:
        for module in modules:
            importlib.import_module(module)
        print(json.dumps({"step": name, **_status()}), flush=True)
    import asyncio

    import uvloop

    from sidecar_tls.sidecar import Sidecar, SidecarConfig

    async def run() -> None:
        config = SidecarConfig(
            agent_socket="/nonexistent/agent.sock",
            pod_ip="127.0.0.1",
            workload="footprint-v1",
            namespace="bench",
            otlp_endpoint=f"http://127.0.0.1:{_free_port()}",
            bind="127.0.0.1",
            outbound_port=0,
            inbound_port=0,
            health_port=0,
            admin_port=0,
            metrics_port=_free_port(),
        )
        sidecar = Sidecar(config)
        await sidecar.start()
        await asyncio.sleep(1.0)  # let the agent streams try (and fail) once
        print(json.dumps({"step": "after Sidecar.start()", **_status()}), flush=True)
        await sidecar.stop()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run())
    loaded = sorted({m.split(".")[0] for m in sys.modules} & set(UNWANTED))
    print(json.dumps({"unwanted": loaded}), flush=True)


# What `python -m meshward sidecar run` imports before the sidecar starts: the CLI entry point.
_ENTRY = """
import re, sys
from meshward.cli import main
main.get_command(None, "sidecar")
text = open("/proc/self/status").read()
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[1:]))
print(re.search(r"VmRSS:\\s+(\\d+)", text).group(1), ",".join(heavy) or "none")
"""


def entry_point() -> tuple[float, str]:
    """RSS (MB) and heavy packages after importing the `meshward` CLI and its sidecar group."""
    out = subprocess.run(
        [sys.executable, "-c", _ENTRY, *UNWANTED],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    return int(out[0]) / 1024, out[1]


def main() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.footprint", "--child"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"footprint child failed:\n{proc.stderr[-2000:]}")
    print(f"{'after importing':<36}{'VmRSS':>8}{'+delta':>8}{'Anon':>8}{'File':>8}   (MB)")
    previous = 0.0
    for line in proc.stdout.splitlines():
        row = json.loads(line)
        if "unwanted" in row:
            print(f"heavy packages loaded: {', '.join(row['unwanted']) or 'none'}")
            continue
        delta = row["VmRSS"] - previous if previous else 0.0
        previous = row["VmRSS"]
        print(
            f"{row['step']:<36}{row['VmRSS']:>8.1f}{delta:>+8.1f}"
            f"{row['RssAnon']:>8.1f}{row['RssFile']:>8.1f}"
        )
    print(f"sidecar RSS after start: {previous:.1f} MB (target <= 35 MB under load)")
    rss, heavy = entry_point()
    print(f"`meshward` CLI entry point + sidecar group imported: {rss:.1f} MB (heavy: {heavy})")


if __name__ == "__main__":
    if "--child" in sys.argv:
        child()
    else:
        main()
