"""Sidecar data-path benchmark: app -> two sidecars (mTLS) -> app, against app -> app direct and
against a pair of nginx instances doing the same mTLS proxying (the C reference), in one run, on
the same backend (nginx returning a small body) and the same load generator (wrk, keep-alive).

Sidecars run as separate processes (one core each at most, as in their pods) on loopback; their
destinations are injected instead of recovered by SO_ORIGINAL_DST (the only difference from a pod).

    python -m bench sidecar          # or: python -m bench.sidecar_bench
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization

REPO = Path(__file__).resolve().parents[1]
CONNECTIONS = 32
DURATION_S = 5
# This machine's speed drifts by tens of percent from minute to minute: every path runs once per
# round, and the report gives medians and the per-round mesh/nginx ratios.
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
MESH = "meshward sidecars"
BARE = "  same, telemetry off"  # no metrics, no tracing: what telemetry costs
RELAY = "uvloop TLS byte relay"  # the floor for Python: mTLS both hops, no HTTP at all
NGINX = "nginx mTLS pair"
CLIENT_ID = "spiffe://cluster.local/ns/bench/sa/client"
SERVER_ID = "spiffe://cluster.local/ns/bench/sa/server"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def _write_pki(tmp: Path) -> None:
    sys.path.insert(0, str(REPO))
    from tests.sidecar_tls.testca import MiniCA

    ca = MiniCA.create()
    (tmp / "root.pem").write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
    for name, sid in (("client", CLIENT_ID), ("server", SERVER_ID)):
        # A DNS SAN as well: nginx's proxy_ssl_verify always checks a name (SVIDs may carry one).
        ident = ca.issue(sid, ttl=dt.timedelta(hours=2), dns=(name,))
        (tmp / f"{name}.pem").write_bytes(ident.leaf.public_bytes(serialization.Encoding.PEM))
        key = tmp / f"{name}-key.pem"
        key.write_bytes(
            ident.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key.chmod(0o600)


def _nginx(tmp: Path, name: str, server_block: str) -> subprocess.Popen[bytes]:
    conf = tmp / f"{name}.conf"
    temp = tmp / f"{name}-temp"
    temp.mkdir(exist_ok=True)
    conf.write_text(
        f"""
worker_processes 1;
daemon off;
pid {tmp}/{name}.pid;
error_log {tmp}/{name}.err warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {temp}/body; proxy_temp_path {temp}/proxy;
  fastcgi_temp_path {temp}/fcgi; uwsgi_temp_path {temp}/uwsgi; scgi_temp_path {temp}/scgi;
  {server_block}
}}
"""
    )
    return subprocess.Popen(["nginx", "-c", str(conf), "-p", str(tmp)], stderr=subprocess.DEVNULL)


@dataclass
class Result:
    """One path's run: requests (or calls) per second, latency, and each proxy's CPU and RSS."""

    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    cpu_us_per_req: list[float]
    rss_mb: list[float]
    failed: int = 0


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _rss_mb(pid: int) -> float:
    m = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(m.group(1)) / 1024 if m else 0.0


def _ms(value: str) -> float:
    """wrk's latency figures ("812.00us", "4.10ms", "1.02s", "1.50m") in milliseconds."""
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", value)
    if not m:
        raise ValueError(f"unreadable wrk latency {value!r}")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}[m.group(2)]
    return float(m.group(1)) * scale


def _wrk(name: str, port: int, pids: list[int]) -> Result:
    url = f"http://127.0.0.1:{port}/"
    # warm up (pools, handshakes), then measure
    subprocess.run(
        ["wrk", "-t1", f"-c{CONNECTIONS}", "-d1s", url], capture_output=True, check=False
    )
    before = [_cpu_ticks(p) for p in pids]
    out = subprocess.run(
        ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{DURATION_S}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    after = [_cpu_ticks(p) for p in pids]
    rss = [_rss_mb(p) for p in pids]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    if errors:
        print(f"   {name}: {errors.group(0)}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    # The latency distribution's own lines: "89.99%" in the thread stats must not match.
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    cpu = [(a - b) / CLK_TCK * 1e6 / max(requests, 1) for a, b in zip(after, before, strict=True)]
    return Result(name, rps, p50, p99, requests, cpu, rss)


def _sidecar_proc(role: str, tmp: Path, listen: int, target: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.sidecar_bench", role, str(tmp), str(listen), str(target)],
        cwd=REPO,
    )


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()


def main() -> None:
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed (make system-deps)")
    tmp = Path(tempfile.mkdtemp(prefix="mwsc-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        _write_pki(tmp)
        backend = _free_port()
        procs.append(
            _nginx(
                tmp,
                "backend",
                f"server {{ listen 127.0.0.1:{backend}; keepalive_requests 100000; "
                f'location / {{ return 200 "ok\\n"; }} }}',
            )
        )
        _wait_port(backend, procs[-1])
        # Every path is up for the whole run; the rounds take turns (see ROUNDS).
        paths: list[tuple[str, int, list[int]]] = [("direct", backend, [])]
        for name, roles in (
            (MESH, ("inbound", "outbound")),
            (BARE, ("inbound-bare", "outbound-bare")),
            (RELAY, ("relay-in", "relay-out")),
        ):
            inbound, outbound = _free_port(), _free_port()
            pair = [
                _sidecar_proc(roles[0], tmp, inbound, backend),
                _sidecar_proc(roles[1], tmp, outbound, inbound),
            ]
            procs.extend(pair)
            _wait_port(inbound, pair[0])
            _wait_port(outbound, pair[1])
            paths.append((name, outbound, [p.pid for p in pair]))
        n_out, workers = start_nginx_pair(tmp, backend, procs, grpc=False)
        paths.append((NGINX, n_out, workers))
        rounds: list[dict[str, Result]] = []
        for i in range(ROUNDS):
            # Each round in another order, so a slow spell of the machine hits every path.
            order = paths[i % len(paths) :] + paths[: i % len(paths)]
            rounds.append({name: _wrk(name, port, pids) for name, port, pids in order})
    finally:
        _stop(procs)
        shutil.rmtree(tmp, ignore_errors=True)
    report(
        rounds,
        f"wrk -t2 -c{CONNECTIONS} -d{DURATION_S}s keep-alive, backend nginx 'ok\\n' (loopback)",
        "req/s",
        MESH,
        NGINX,
        (0.75, 1.5, 35.0),
    )


def start_nginx_pair(
    tmp: Path, backend: int, procs: list[subprocess.Popen[bytes]], *, grpc: bool
) -> tuple[int, list[int]]:
    """nginx-out (plain in, mTLS out) -> nginx-in (mTLS in, plain out) -> backend, proxying
    HTTP/1.1 or (`grpc`) gRPC with grpc_pass; returns nginx-out's port and the two workers' pids."""
    n_in, n_out = _free_port(), _free_port()
    prefix, h2 = ("grpc", " http2") if grpc else ("proxy", "")
    names = (f"{prefix}-nginx-in", f"{prefix}-nginx-out")
    if grpc:
        to_app, to_peer = "grpc_pass grpc://app;", "grpc_pass grpcs://peer;"
    else:
        to_app = to_peer = 'proxy_http_version 1.1; proxy_set_header Connection "";'
        to_app, to_peer = f"proxy_pass http://app; {to_app}", f"proxy_pass https://peer; {to_peer}"
    server_nginx = _nginx(
        tmp,
        names[0],
        f"""
  upstream app {{ server 127.0.0.1:{backend}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{n_in} ssl{h2}; keepalive_requests 1000000;
    ssl_certificate {tmp}/server.pem; ssl_certificate_key {tmp}/server-key.pem;
    ssl_client_certificate {tmp}/root.pem; ssl_verify_client on;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {{ {to_app} {prefix}_set_header x-forwarded-client-cert $ssl_client_s_dn; }}
  }}""",
    )
    client_nginx = _nginx(
        tmp,
        names[1],
        f"""
  upstream peer {{ server 127.0.0.1:{n_in}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{n_out}{h2}; keepalive_requests 1000000;
    location / {{ {to_peer}
      {prefix}_ssl_certificate {tmp}/client.pem; {prefix}_ssl_certificate_key {tmp}/client-key.pem;
      {prefix}_ssl_trusted_certificate {tmp}/root.pem; {prefix}_ssl_verify on;
      {prefix}_ssl_name server; {prefix}_ssl_session_reuse on; }}
  }}""",
    )
    procs.extend([server_nginx, client_nginx])
    _wait_port(n_in, server_nginx)
    _wait_port(n_out, client_nginx)
    return n_out, _nginx_workers(tmp, names)


def _nginx_workers(tmp: Path, names: tuple[str, ...]) -> list[int]:
    pids = []
    for name in names:
        master = int((tmp / f"{name}.pid").read_text())
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        pids.append(int(children[0]) if children else master)
    return pids


def report(
    rounds: list[dict[str, Result]],
    setup: str,
    unit: str,
    mesh: str,
    nginx: str,
    targets: tuple[float, float, float | None],
) -> None:
    """The table of medians, then mesh/nginx within each round (the same minutes of the machine)
    and their median against `targets`: (throughput ratio >=, p99 ratio <=, sidecar RSS MB <=)."""
    per = unit.split("/")[0].removesuffix("s")  # req/s -> req, calls/s -> call
    print(f"{setup}; {len(rounds)} rounds, each path once per round in turn; medians")
    print(f"{'path':<26}{unit:>9}{'p50 ms':>9}{'p99 ms':>9}   CPU us/{per} per proxy  RSS MB")
    for name in rounds[0]:
        runs = [r[name] for r in rounds]
        cpu = " + ".join(
            f"{statistics.median(r.cpu_us_per_req[i] for r in runs):.0f}"
            for i in range(len(runs[0].cpu_us_per_req))
        )
        rss = " / ".join(
            f"{max(r.rss_mb[i] for r in runs):.1f}" for i in range(len(runs[0].rss_mb))
        )
        print(
            f"{name:<26}{statistics.median(r.rps for r in runs):>9.0f}"
            f"{statistics.median(r.p50_ms for r in runs):>9.2f}"
            f"{statistics.median(r.p99_ms for r in runs):>9.2f}   {cpu or '-':<22} {rss or '-'}"
        )
    throughput = [r[mesh].rps / r[nginx].rps for r in rounds]
    latency = [r[mesh].p99_ms / r[nginx].p99_ms for r in rounds]
    print(
        f"per round mesh/nginx: {unit} "
        + ", ".join(f"{x:.0%}" for x in throughput)
        + "; p99 "
        + ", ".join(f"{x:.2f}x" for x in latency)
    )
    min_ratio, max_p99, max_rss = targets
    line = (
        f"mesh/nginx {unit} {statistics.median(throughput):.0%} (target >= {min_ratio:.0%}), "
        f"p99 {statistics.median(latency):.2f}x (target <= {max_p99:g}x)"
    )
    if max_rss is not None:
        rss_max = max(max(r[mesh].rss_mb) for r in rounds)
        line += f", max sidecar RSS {rss_max:.1f} MB (target <= {max_rss:g} MB)"
    failed = sum(r[n].failed for r in rounds for n in r)
    print(line + (f"; failed: {failed}" if failed else ""))


# --- the sidecar processes -------------------------------------------------------------


def _serve_role(role: str, tmp: Path, listen: int, target: int) -> None:
    if role.startswith("relay-"):
        _serve_relay(role, tmp, listen, target)
        return
    # What `meshward sidecar run` imports, so the RSS measured is the real process's.
    import uvloop
    from cryptography import x509

    import sidecar_tls.cli  # noqa: F401
    from sidecar_tls.authz import InboundAuthorizer
    from sidecar_tls.destinations import MeshSnapshot, MeshWorkload, resolve_destination
    from sidecar_tls.identity import StaticSvidSource, WorkloadIdentity
    from sidecar_tls.proxy.inbound import InboundProxy
    from sidecar_tls.proxy.net import listen_socket, serve_accepts
    from sidecar_tls.proxy.outbound import OutboundProxy
    from sidecar_tls.sidecar import build_observer, freeze_startup_heap
    from sidecar_tls.state import SidecarState
    from sidecar_tls.telemetry.observe import HopObserver, NoopObserver

    name = "server" if role.startswith("inbound") else "client"
    identity = WorkloadIdentity(
        chain=(x509.load_pem_x509_certificate((tmp / f"{name}.pem").read_bytes()),),
        key=serialization.load_pem_private_key((tmp / f"{name}-key.pem").read_bytes(), None),  # type: ignore[arg-type]
        bundles={
            "cluster.local": (x509.load_pem_x509_certificate((tmp / "root.pem").read_bytes()),)
        },
    )
    snapshot = MeshSnapshot(
        workloads=(MeshWorkload("server", "bench", "server", SERVER_ID, "127.0.0.1", "server"),)
    )
    state = SidecarState(StaticSvidSource(identity), snapshot)
    # The observers `meshward sidecar run` builds: metrics and tracing at the default sampling
    # (no collector: sampled spans are made, then dropped), and the (empty) authorization policy.
    # The "-bare" roles observe nothing: what telemetry costs.
    observer: HopObserver = NoopObserver()
    tracing = None
    if not role.endswith("-bare"):
        observer, _, tracing = build_observer(
            name,
            "bench",
            name,
            "127.0.0.1",
            None,
            float(os.environ.get("BENCH_TRACE_SAMPLING", "1")),
        )
    authorizer = InboundAuthorizer("bench", {"app": name})
    authorizer.update([], "istio-system")

    async def run() -> None:
        handle = (
            InboundProxy(
                state,
                authorizer,
                pod_ip="127.0.0.1",
                workload=name,
                namespace="bench",
                service=f"{name}.bench.svc.cluster.local",
                observer=observer,
                original_dst=lambda _s: ("127.0.0.1", target),
            ).handle
            if role.startswith("inbound")
            else OutboundProxy(
                state,
                workload=name,
                namespace="bench",
                observer=observer,
                destination_for=lambda _s: resolve_destination(snapshot, "127.0.0.1", target),
            ).handle
        )
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        task = asyncio.create_task(serve_accepts(listen_socket("127.0.0.1", listen), handle))
        freeze_startup_heap()  # as `meshward sidecar run` does once started
        await stop.wait()
        task.cancel()
        if tracing is not None:
            tracing.shutdown()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run())


def _serve_relay(role: str, tmp: Path, listen: int, target: int) -> None:
    """A TLS byte relay with uvloop: "relay-in" terminates mTLS, "relay-out" originates it."""
    import uvloop

    if role == "relay-in":
        server_ctx: ssl.SSLContext | None = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ctx.load_cert_chain(tmp / "server.pem", tmp / "server-key.pem")
        server_ctx.load_verify_locations(tmp / "root.pem")
        server_ctx.verify_mode = ssl.CERT_REQUIRED
        client_ctx = None
    else:
        server_ctx = None
        client_ctx = ssl.create_default_context(cafile=str(tmp / "root.pem"))
        client_ctx.load_cert_chain(tmp / "client.pem", tmp / "client-key.pem")
        client_ctx.check_hostname = False

    class Side(asyncio.Protocol):
        def __init__(self) -> None:
            self.peer: Side | None = None
            self.transport: asyncio.Transport | None = None
            self.pending: list[bytes] = []

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport  # type: ignore[assignment]

        def data_received(self, data: bytes) -> None:
            if self.peer is not None and self.peer.transport is not None:
                self.peer.transport.write(data)
            else:
                self.pending.append(data)

        def connection_lost(self, exc: Exception | None) -> None:
            if self.peer is not None and self.peer.transport is not None:
                self.peer.transport.close()

    async def run() -> None:
        loop = asyncio.get_running_loop()

        async def connect(down: Side) -> None:
            _, up = await loop.create_connection(Side, "127.0.0.1", target, ssl=client_ctx)
            up.peer, down.peer = down, up
            for data in down.pending:
                assert up.transport is not None
                up.transport.write(data)

        connecting: set[asyncio.Task[None]] = set()

        def accepted() -> Side:
            down = Side()
            task = loop.create_task(connect(down))
            connecting.add(task)
            task.add_done_callback(connecting.discard)
            return down

        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        server = await loop.create_server(accepted, "127.0.0.1", listen, ssl=server_ctx)
        await stop.wait()
        server.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run())


if __name__ == "__main__":
    if len(sys.argv) == 5:
        _serve_role(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
