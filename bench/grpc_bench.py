"""gRPC benchmark: unary calls (small messages, 64 concurrent on one channel, ghz) through the two
sidecars (h2c from the client, HTTP/2 over mTLS between them, h2c to the app), against the same
calls direct and through a pair of nginx instances doing the same with `grpc_pass` over mTLS, in
one run, on the same backend (a grpcio echo server) and the same load generator.

The sidecars are the processes `python -m bench sidecar` runs (bench/sidecar_bench.py's roles),
one core each at most. Rounds take turns as in that benchmark (the machine's speed drifts).

    python -m bench grpc       # needs tools/bin/ghz: scripts/build_ghz.sh (Go), else it says so
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.sidecar_bench import (
    CLK_TCK,
    REPO,
    Result,
    _cpu_ticks,
    _free_port,
    _rss_mb,
    _sidecar_proc,
    _stop,
    _wait_port,
    _write_pki,
    report,
    start_nginx_pair,
)

CONCURRENCY = 64
DURATION_S = 5
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
PAYLOAD = "bWVzaHdhcmQgZ3JwYyBiZW5jaG1hcmsgcGF5bG9hZCAoNjQgYnl0ZXMpIC4uLi4uLi4uLi4uLi4uLg=="  # 64 B
MESH = "meshward sidecars"
NGINX = "nginx grpc_pass mTLS"
GHZ = Path(os.environ.get("MESHWARD_GHZ", REPO / "tools" / "bin" / "ghz"))


def _ghz(name: str, port: int, pids: list[int]) -> Result:
    args = [
        str(GHZ), "--insecure", "--proto", str(REPO / "bench" / "echo.proto"),
        "--call", "test.Echo.Echo", "-d", json.dumps({"data": PAYLOAD}),
        "-c", str(CONCURRENCY), "--connections", "1", "--format", "json",
    ]  # fmt: skip
    target = f"127.0.0.1:{port}"
    # Warm up (connections, pools) for a second; it also tells how many calls fill DURATION_S.
    # A call count, not a duration: ghz cancels the calls in flight when a duration ends and
    # counts them as failed.
    warm = subprocess.run(
        [*args, "-z", "1s", target], capture_output=True, text=True, check=False
    ).stdout
    total = max(500, int(json.loads(warm)["rps"] * DURATION_S)) if warm else 2000
    before = [_cpu_ticks(p) for p in pids]
    out = subprocess.run(
        [*args, "-n", str(total), target], capture_output=True, text=True, check=True
    ).stdout
    after = [_cpu_ticks(p) for p in pids]
    rss = [_rss_mb(p) for p in pids]
    summary = json.loads(out)
    calls = int(summary["count"])
    codes = summary.get("statusCodeDistribution") or {}
    failed = calls - int(codes.get("OK", 0))
    if failed:
        print(f"   {name}: {failed} failed calls: {codes} {summary.get('errorDistribution')}")
    latency = {int(d["percentage"]): d["latency"] / 1e6 for d in summary["latencyDistribution"]}
    cpu = [(a - b) / CLK_TCK * 1e6 / max(calls, 1) for a, b in zip(after, before, strict=True)]
    return Result(name, float(summary["rps"]), latency[50], latency[99], calls, cpu, rss, failed)


def _backend(port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.grpc_bench", "backend", str(port)], cwd=REPO
    )


def _serve_backend(port: int) -> None:
    import grpc

    sys.path.insert(0, str(REPO))
    from tests.sidecar_tls import grpc_apps

    async def run() -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((grpc_apps.handler(),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await server.stop(None)

    asyncio.run(run())


def main() -> None:
    if not GHZ.exists() and shutil.which("go") is not None:
        subprocess.run(["bash", str(REPO / "scripts" / "build_ghz.sh")], check=False)
    if not GHZ.exists():
        raise RuntimeError(f"{GHZ} is missing: scripts/build_ghz.sh builds it (Go needed)")
    if shutil.which("nginx") is None:
        raise RuntimeError("nginx is not installed (make system-deps)")
    tmp = Path(tempfile.mkdtemp(prefix="mwgr-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        _write_pki(tmp)
        backend = _free_port()
        procs.append(_backend(backend))
        _wait_port(backend, procs[-1])
        paths: list[tuple[str, int, list[int]]] = [("direct", backend, [])]
        inbound, outbound = _free_port(), _free_port()
        pair = [
            _sidecar_proc("inbound", tmp, inbound, backend),
            _sidecar_proc("outbound", tmp, outbound, inbound),
        ]
        procs.extend(pair)
        _wait_port(inbound, pair[0])
        _wait_port(outbound, pair[1])
        paths.append((MESH, outbound, [p.pid for p in pair]))
        n_out, workers = start_nginx_pair(tmp, backend, procs, grpc=True)
        paths.append((NGINX, n_out, workers))
        rounds: list[dict[str, Result]] = []
        for i in range(ROUNDS):
            order = paths[i % len(paths) :] + paths[: i % len(paths)]
            rounds.append({name: _ghz(name, port, pids) for name, port, pids in order})
    finally:
        _stop(procs)
        shutil.rmtree(tmp, ignore_errors=True)
    report(
        rounds,
        f"ghz unary /test.Echo/Echo, 64-byte messages, -c{CONCURRENCY} on one connection, "
        f"~{DURATION_S}s of calls per path, backend grpcio (loopback)",
        "calls/s",
        MESH,
        NGINX,
        (0.5, 2.0, None),
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["backend"]:
        _serve_backend(int(sys.argv[2]))
    else:
        main()
