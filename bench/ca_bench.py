"""CSRs signed per second: the signing core alone, and through the gRPC API, in the same run.

Core: parse the PEM CSR, check its signature and key, sign the SVID, PEM-encode it (exactly what
the servicer does per request, minus the wire). gRPC: `meshward ca serve` in a subprocess, one
client keeping 16 CreateCertificate calls in flight over one mTLS connection with the bench
node's SVID (a node agent renewing its workloads), every call a different pre-generated P-256 CSR.
Clients, one row each: tools/bin/caload (a lean Go client, tools/ghz/caload), ghz, and grpcio's
Python client in this process; the machine has 2 cores, so a client's CPU is taken from the
server: each row prints both sides' CPU per CSR. The no-op row is grpcio's own per-call floor.
Targets on the 2-core machine: >= 2,000 CSR/s through gRPC and >= 60 % of the core's rate.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ca.authority import make_root
from ca.issuer import SigningAuthority, csr_public_key, issue_svid
from meshward_common.protos import istio_ca_pb2, istio_ca_pb2_grpc
from meshward_common.spiffe_id import node_id

IN_FLIGHT = 16
CORE_SECONDS = 2.0
GRPC_WARMUP = 0.5
GRPC_SECONDS = 3.0
POOL = 400
SERVER_NAME = "meshward-control-plane"
REPO = Path(__file__).resolve().parent.parent


def make_csrs(n: int) -> list[str]:
    out = []
    for _ in range(n):
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")]))
            .sign(key, hashes.SHA256())
        )
        out.append(csr.public_bytes(serialization.Encoding.PEM).decode())
    return out


def core_rate(csrs: list[str]) -> float:
    now = dt.datetime.now(dt.UTC)
    cert, key = make_root("cluster.local", now)
    authority = SigningAuthority(cert, key, (), (cert,))
    identity = node_id("cluster.local", "bench")
    ttl = dt.timedelta(hours=1)
    done = 0
    start = time.perf_counter()
    while time.perf_counter() - start < CORE_SECONDS:
        public_key = csr_public_key(csrs[done % len(csrs)])
        leaf = issue_svid(authority, public_key, identity, ttl, now)[0]
        leaf.public_bytes(serialization.Encoding.PEM)
        done += 1
    return done / (time.perf_counter() - start)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_server(state: Path, port: int) -> subprocess.Popen[bytes]:
    registry = state.parent / "registry.yaml"
    registry.write_text("workloads: []\n")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "meshward",
            "ca",
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--state-dir",
            str(state),
            "--registry",
            str(registry),
            "--log-level",
            "WARNING",
            # One bench node asks far beyond a real node's budget; measure signing, not refusals.
            "--rate-limit",
            "1000000",
            "--rate-burst",
            "1000000",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if "serving on" not in line:
        proc.kill()
        raise RuntimeError(f"control plane did not start: {line}{proc.stdout.read().decode()}")
    return proc


def _join_token(state: Path) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "meshward", "ca", "join-token", "--node", "bench",
         "--state-dir", str(state)],
        cwd=REPO, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout.strip()


def _cpu_seconds(pid: int) -> float:
    """User+system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _bootstrap(address: str, bundle: bytes, token: str) -> tuple[bytes, bytes]:
    """Redeem the join token for the bench node's SVID: (cert PEM, key PEM) for mTLS renewal."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )
    options = [("grpc.ssl_target_name_override", SERVER_NAME)]
    async with grpc.aio.secure_channel(
        address, grpc.ssl_channel_credentials(bundle), options=options
    ) as ch:
        stub = istio_ca_pb2_grpc.IstioCertificateServiceStub(ch)
        resp = await stub.CreateCertificate(
            istio_ca_pb2.IstioCertificateRequest(csr=csr),
            metadata=(("authorization", f"Bearer {token}"),),
        )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return resp.cert_chain[0].encode(), key_pem


async def _python_rate(
    address: str, bundle: bytes, node: tuple[bytes, bytes], csrs: list[str], server_pid: int
) -> Run:
    """grpcio's Python client in this process (which runs nothing else meanwhile)."""
    options = [("grpc.ssl_target_name_override", SERVER_NAME)]
    creds = grpc.ssl_channel_credentials(bundle, node[1], node[0])
    async with grpc.aio.secure_channel(address, creds, options=options) as ch:
        stub = istio_ca_pb2_grpc.IstioCertificateServiceStub(ch)
        requests = [istio_ca_pb2.IstioCertificateRequest(csr=c) for c in csrs]
        counter = {"n": 0, "counting": False}
        stop_at = time.perf_counter() + GRPC_WARMUP + GRPC_SECONDS

        async def worker(offset: int) -> None:
            i = offset
            while time.perf_counter() < stop_at:
                await stub.CreateCertificate(requests[i % len(requests)])
                i += IN_FLIGHT
                if counter["counting"]:
                    counter["n"] += 1

        async def window() -> Run:
            await asyncio.sleep(GRPC_WARMUP)
            counter["counting"] = True
            start, cpu, own = time.perf_counter(), _cpu_seconds(server_pid), time.process_time()
            await asyncio.sleep(GRPC_SECONDS)
            counter["counting"] = False
            n = max(counter["n"], 1)
            return Run(
                n / (time.perf_counter() - start),
                (_cpu_seconds(server_pid) - cpu) / n,
                (time.process_time() - own) / n,
            )

        result, *_ = await asyncio.gather(window(), *(worker(k) for k in range(IN_FLIGHT)))
        assert isinstance(result, Run)
        return result


class Run(NamedTuple):
    rate: float  # OK calls per second
    server_cpu: float  # server CPU seconds per OK call
    client_cpu: float  # the load generator's CPU seconds per OK call


def go_tool(name: str) -> str | None:
    """tools/bin/<name> (scripts/build_ghz.sh builds ghz and caload when Go is installed), or
    $MESHWARD_GHZ for ghz; None if there is neither."""
    given = os.environ.get("MESHWARD_GHZ") if name == "ghz" else None
    if given:
        return given
    built = REPO / "tools" / "bin" / name
    if shutil.which("go"):
        subprocess.run([str(REPO / "scripts" / "build_ghz.sh")], check=False)  # no-op when built
    return str(built) if built.exists() else None


def _wait_cpu(proc: subprocess.Popen[str]) -> tuple[int, float]:
    """Wait for a child; (exit status, its user+system CPU seconds)."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_utime + usage.ru_stime


def _ghz(
    ghz: str, target: str, tls: list[str], data: list[str], seconds: float
) -> tuple[dict[str, Any], float]:
    proc = subprocess.Popen(
        [
            ghz, "--proto", str(REPO / "protos" / "istio_ca.proto"),
            "--call", "istio.v1.auth.IstioCertificateService/CreateCertificate",
            *tls, "-c", str(IN_FLIGHT), "--connections", "1", "-z", f"{seconds}s",
            "--duration-stop", "wait", *data, "-O", "json", target,
        ],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stderr is not None
    out, err = proc.stdout.read(), proc.stderr.read()
    code, cpu = _wait_cpu(proc)
    if code != 0 or not out.startswith("{"):
        raise RuntimeError(f"ghz failed ({code}): {err.strip() or out}")
    report: dict[str, Any] = json.loads(out)
    return report, cpu


def ghz_rate(ghz: str, target: str, tls: list[str], data: list[str], server_pid: int) -> Run:
    """ghz, a warm-up run, then the window (its CPU includes building requests from JSON)."""
    _ghz(ghz, target, tls, data, GRPC_WARMUP)
    cpu = _cpu_seconds(server_pid)
    report, client_cpu = _ghz(ghz, target, tls, data, GRPC_SECONDS)
    cpu = _cpu_seconds(server_pid) - cpu
    codes = report.get("statusCodeDistribution") or {}
    ok = int(codes.get("OK", 0))
    if ok != report["count"]:
        raise RuntimeError(f"ghz saw errors: {codes} {report.get('errorDistribution')}")
    seconds = report["total"] / 1e9  # nanoseconds
    return Run(ok / seconds, cpu / max(ok, 1), client_cpu / max(ok, 1))


def caload_rate(caload: str, target: str, tls: list[str], data: Path, server_pid: int) -> Run:
    """tools/ghz/caload: one mTLS connection, IN_FLIGHT calls, request i = CSR i mod pool."""
    proc = subprocess.Popen(
        [
            caload, "-addr", target, *tls, "-data", str(data),
            "-c", str(IN_FLIGHT), "-warmup", f"{GRPC_WARMUP}s", "-z", f"{GRPC_SECONDS}s",
        ],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stderr is not None
    # It prints a line as the window opens and one as it closes: sample the server's CPU then.
    cpu = _cpu_seconds(server_pid) if proc.stdout.readline() == "counting\n" else 0.0
    cpu = _cpu_seconds(server_pid) - cpu if proc.stdout.readline() else 0.0
    out, err = proc.stdout.read(), proc.stderr.read()
    code, client_cpu = _wait_cpu(proc)
    if code != 0 or not out.startswith("{"):
        raise RuntimeError(f"caload failed ({code}): {err.strip() or out}")
    report = json.loads(out)
    if report["errors"]:
        raise RuntimeError(f"caload saw errors: {report['errors']}")
    ok = max(int(report["ok"]), 1)
    # The client's CPU covers its warm-up too: per call over every call it made.
    total = ok * (GRPC_WARMUP + GRPC_SECONDS) / GRPC_SECONDS
    return Run(ok / float(report["seconds"]), cpu / ok, client_cpu / total)


def grpc_rates(csrs: list[str]) -> dict[str, Run]:
    """Rate and CPU per CSR through `meshward ca serve`, per client that could be run."""
    rates: dict[str, Run] = {}
    with tempfile.TemporaryDirectory(prefix="ca-bench-") as tmp:
        state = Path(tmp) / "state"
        port = _free_port()
        proc = _start_server(state, port)
        address = f"127.0.0.1:{port}"
        try:
            token = _join_token(state)
            bundle = (state / "trust-bundle.pem").read_bytes()
            node = asyncio.run(_bootstrap(address, bundle, token))
            files = {
                "cacert": state / "trust-bundle.pem",
                "cert": Path(tmp) / "node.pem",
                "key": Path(tmp) / "node-key.pem",
                # One JSON array: request n carries element n mod length, so the calls in
                # flight all carry different CSRs.
                "data": Path(tmp) / "csrs.json",
            }
            files["cert"].write_bytes(node[0])
            files["key"].touch(0o600)
            files["key"].write_bytes(node[1])
            files["data"].write_text(json.dumps([{"csr": c} for c in csrs]))
            caload = go_tool("caload")
            if caload is not None:
                tls = [
                    "-cacert", str(files["cacert"]), "-cname", SERVER_NAME,
                    "-cert", str(files["cert"]), "-key", str(files["key"]),
                ]  # fmt: skip
                rates["caload (Go)"] = caload_rate(caload, address, tls, files["data"], proc.pid)
            ghz = go_tool("ghz")
            if ghz is not None:
                tls = [
                    "--cacert", str(files["cacert"]), "--cname", SERVER_NAME,
                    "--cert", str(files["cert"]), "--key", str(files["key"]),
                ]  # fmt: skip
                data = ["-D", str(files["data"])]
                rates["ghz (Go)"] = ghz_rate(ghz, address, tls, data, proc.pid)
            rates["grpcio (Python)"] = asyncio.run(
                _python_rate(address, bundle, node, csrs, proc.pid)
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
    return rates


class _NoopService(istio_ca_pb2_grpc.IstioCertificateServiceServicer):
    """Answers a chain-sized response without doing anything: grpcio's own cost per call."""

    async def CreateCertificate(
        self, request: istio_ca_pb2.IstioCertificateRequest, context: grpc.aio.ServicerContext
    ) -> istio_ca_pb2.IstioCertificateResponse:
        return istio_ca_pb2.IstioCertificateResponse(cert_chain=["x" * 700, "y" * 700])


def serve_noop(port: int) -> None:
    async def run() -> None:
        server = grpc.aio.server()
        istio_ca_pb2_grpc.add_IstioCertificateServiceServicer_to_server(_NoopService(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        print("serving on", flush=True)
        await server.wait_for_termination()

    import uvloop  # as `meshward ca serve` runs: the floor under the same event loop

    uvloop.install()
    asyncio.run(run())


async def _noop_rate(address: str, server_pid: int) -> tuple[float, float]:
    async with grpc.aio.insecure_channel(address) as ch:
        stub = istio_ca_pb2_grpc.IstioCertificateServiceStub(ch)
        request = istio_ca_pb2.IstioCertificateRequest(csr="z" * 500)
        stop_at = time.perf_counter() + GRPC_WARMUP
        while time.perf_counter() < stop_at:
            await stub.CreateCertificate(request)
        done = [0]
        stop_at = time.perf_counter() + GRPC_SECONDS
        start, cpu = time.perf_counter(), _cpu_seconds(server_pid)

        async def worker() -> None:
            while time.perf_counter() < stop_at:
                await stub.CreateCertificate(request)
                done[0] += 1

        await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
        n = max(done[0], 1)
        return n / (time.perf_counter() - start), (_cpu_seconds(server_pid) - cpu) / n


def noop_rate() -> tuple[str, Run]:
    """(client, run) against a servicer that does nothing: grpcio's own cost per call."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", f"from bench.ca_bench import serve_noop; serve_noop({port})"],
        cwd=REPO,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        caload = go_tool("caload")
        if caload is None:
            rate, cpu = asyncio.run(_noop_rate(f"127.0.0.1:{port}", proc.pid))
            return "grpcio", Run(rate, cpu, float("nan"))
        with tempfile.TemporaryDirectory(prefix="ca-bench-") as tmp:
            data = Path(tmp) / "noop.json"
            data.write_text(json.dumps([{"csr": "z" * 500}]))
            return "caload", caload_rate(caload, f"127.0.0.1:{port}", [], data, proc.pid)
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    csrs = make_csrs(POOL)
    core = core_rate(csrs)
    rates = grpc_rates(csrs)
    noop_client, noop = noop_rate()
    load = os.getloadavg()[0]
    print(f"ca: signing core                {core:6.0f} CSR/s  ({1e6 / core:.0f} us CPU each)")
    for client, run in rates.items():
        print(
            f"ca: gRPC, {client:<17} {run.rate:6.0f} CSR/s  {100 * run.rate / core:5.1f} % of core;"
            f" CPU per CSR: server {run.server_cpu * 1e6:.0f} us, client {run.client_cpu * 1e6:.0f} us"
        )
    if "caload (Go)" not in rates:
        print("ca: (no Go load generator: install Go; scripts/build_ghz.sh builds caload and ghz)")
    print(
        f"ca: grpcio no-op unary         {noop.rate:6.0f} calls/s (plaintext, {noop_client} client;"
        f" server {noop.server_cpu * 1e6:.0f} us CPU per call: grpcio's own floor)"
    )
    print(
        f"ca: {IN_FLIGHT} calls in flight on one mTLS connection, a distinct P-256 CSR each, one server"
        " process; bench node's rate limit raised (one node asks far beyond a real node's budget)"
    )
    print("ca: targets                    >= 2000 CSR/s through gRPC, >= 60 % of the core's rate")
    print(
        f"ca: 1-min load average         {load:6.2f}        (2 cores, shared with the client and others)"
    )


if __name__ == "__main__":
    main()
