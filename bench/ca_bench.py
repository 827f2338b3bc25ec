"""CSRs signed per second: the signing core alone, and through the gRPC API, in the same run.

Core: parse the PEM CSR, check its signature and key, sign the SVID, PEM-encode it (exactly what
the servicer does per request, minus the wire). gRPC: `meshward ca serve` in a subprocess, one
client process keeping 16 CreateCertificate calls in flight over one mTLS channel (a node agent
renewing its workloads). Both use P-256 CSRs generated before timing starts.
Targets on the 2-core machine: >= 2,000 CSR/s through gRPC and >= 60 % of the core's rate.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ca.authority import make_root
from ca.issuer import SigningAuthority, issue_svid, parse_csr
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
        csr = parse_csr(csrs[done % len(csrs)])
        leaf = issue_svid(authority, csr.public_key(), identity, ttl, now)[0]
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


async def _grpc_rate(
    address: str, bundle: bytes, token: str, csrs: list[str], server_pid: int
) -> tuple[float, float]:
    """(CSRs per second, server CPU seconds per CSR) over the measuring window."""
    options = [("grpc.ssl_target_name_override", SERVER_NAME)]
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )
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
    creds = grpc.ssl_channel_credentials(bundle, key_pem, resp.cert_chain[0].encode())
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

        async def window() -> tuple[float, float]:
            await asyncio.sleep(GRPC_WARMUP)
            counter["counting"] = True
            start, cpu = time.perf_counter(), _cpu_seconds(server_pid)
            await asyncio.sleep(GRPC_SECONDS)
            counter["counting"] = False
            n = max(counter["n"], 1)
            return n / (time.perf_counter() - start), (_cpu_seconds(server_pid) - cpu) / n

        result, *_ = await asyncio.gather(window(), *(worker(k) for k in range(IN_FLIGHT)))
        assert isinstance(result, tuple)
        return result


def grpc_rate(csrs: list[str]) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="ca-bench-") as tmp:
        state = Path(tmp) / "state"
        port = _free_port()
        proc = _start_server(state, port)
        try:
            token = _join_token(state)
            bundle = (state / "trust-bundle.pem").read_bytes()
            return asyncio.run(_grpc_rate(f"127.0.0.1:{port}", bundle, token, csrs, proc.pid))
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


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


def noop_rate() -> tuple[float, float]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", f"from bench.ca_bench import serve_noop; serve_noop({port})"],
        cwd=REPO,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        return asyncio.run(_noop_rate(f"127.0.0.1:{port}", proc.pid))
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    csrs = make_csrs(POOL)
    core = core_rate(csrs)
    wire, server_cpu = grpc_rate(csrs)
    noop, noop_cpu = noop_rate()
    load = os.getloadavg()[0]
    print(f"ca: signing core           {core:6.0f} CSR/s  ({1e6 / core:.0f} us CPU each)")
    print(
        f"ca: gRPC CreateCertificate {wire:6.0f} CSR/s  ({IN_FLIGHT} in flight, mTLS, one server"
        f" process using {server_cpu * 1e6:.0f} us CPU per CSR)"
    )
    print(
        f"ca: grpcio no-op unary     {noop:6.0f} calls/s ({IN_FLIGHT} in flight, plaintext; server"
        f" CPU {noop_cpu * 1e6:.0f} us per call: grpcio's own floor)"
    )
    print(
        f"ca: gRPC / core            {100 * wire / core:6.1f} %      (targets: >= 2000 CSR/s, >= 60 %)"
    )
    print(
        f"ca: 1-min load average     {load:6.2f}        (2 cores, shared with the client and others)"
    )


if __name__ == "__main__":
    main()
