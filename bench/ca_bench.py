"""X.509-SVIDs signed per second: meshward's CA beside SPIRE's server, in the same run, in rounds.

SPIRE (v1.13.3, scripts/build_spire.sh) and `meshward ca serve` (its default workers, one per core)
are driven by the same Go client (tools/bin/caload), 16 calls in flight over CONNS connections (node
agents: each has its own), every call a different pre-generated P-256 CSR: SPIRE's `MintX509SVID`
over its local admin socket, meshward's `CreateCertificate` over mTLS with the bench node's SVID,
on its mTLS port (the native transport, `ca.native_port`) and on 15012 (the front door). The rows
alternate within each of BENCH_ROUNDS rounds (the machine's speed drifts); each prints SVIDs/s,
the server's CPU per SVID (every process of it), the cores the server and the client kept busy,
the load average, and the ratios to SPIRE. Targets on the 2-core machine: >= 1.5x SPIRE's
SVIDs/s, CPU per SVID no higher than SPIRE's.

After the rounds, for reference: the signing core alone in this process; ghz and grpcio's Python
client against the mTLS port; a servicer that does nothing, on grpcio (grpcio's own per-call floor)
and on the native transport over mTLS (the mTLS port's own floor).
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
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bench.spire import SpireServer, spire_server
from ca.authority import make_root
from ca.config import default_workers
from ca.issuer import SigningAuthority, csr_public_key, issue_svid
from meshward_common.protos import istio_ca_pb2, istio_ca_pb2_grpc
from meshward_common.spiffe_id import node_id

IN_FLIGHT = 16
CONNS = 8
CORE_SECONDS = 2.0
GRPC_WARMUP = 1.0
GRPC_SECONDS = 3.0
ROUND_SECONDS = float(os.environ.get("BENCH_CA_SECONDS", "10"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
# `meshward ca serve --workers`; unset: its default (one per core).
WORKERS = os.environ.get("BENCH_CA_WORKERS")
POOL = 400
SERVER_NAME = "meshward-control-plane"
REPO = Path(__file__).resolve().parent.parent


def make_csrs(n: int) -> list[str]:
    out = []
    for i in range(n):
        key = ec.generate_private_key(ec.SECP256R1())
        # SPIRE's MintX509SVID takes the identity from the CSR's URI SAN; meshward ignores it.
        uri = x509.UniformResourceIdentifier(f"spiffe://cluster.local/ns/bench/sa/bench-{i}")
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")]))
            .add_extension(x509.SubjectAlternativeName([uri]), critical=False)
            .sign(key, hashes.SHA256())
        )
        out.append(csr.public_bytes(serialization.Encoding.PEM).decode())
    return out


def core_rate(csrs: list[str]) -> tuple[float, float]:
    """(CSRs/s, CPU seconds each) of the signing core in this process."""
    now = dt.datetime.now(dt.UTC)
    cert, key = make_root("cluster.local", now)
    authority = SigningAuthority(cert, key, (), (cert,))
    identity = node_id("cluster.local", "bench")
    ttl = dt.timedelta(hours=1)
    done = 0
    start, cpu = time.perf_counter(), time.process_time()
    while time.perf_counter() - start < CORE_SECONDS:
        public_key = csr_public_key(csrs[done % len(csrs)])
        leaf = issue_svid(authority, public_key, identity, ttl, now)[0]
        leaf.public_bytes(serialization.Encoding.PEM)
        done += 1
    # CPU time, not the window: on a loaded machine the window includes others' turns.
    return done / (time.perf_counter() - start), (time.process_time() - cpu) / done


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_server(state: Path, port: int, mtls_port: int) -> subprocess.Popen[bytes]:
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
            "--mtls-listen",
            f"127.0.0.1:{mtls_port}",
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
            *(("--workers", WORKERS) if WORKERS else ()),
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
    """User+system CPU time of a process and its descendants so far (Linux /proc; the
    descendants still running: the CA's workers live as long as the bench measures)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        total += sum(_cpu_seconds(int(child)) for child in children)
    return total


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
    load: float = float("nan")  # the machine's 1-min load average as the window closed

    def cores(self) -> str:
        """Cores the server and the client kept busy: how close the 2-core machine is to full."""
        return f"{self.rate * self.server_cpu:4.2f}+{self.rate * self.client_cpu:4.2f} cores"


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


def caload_rate(
    caload: str,
    target: str,
    tls: list[str],
    data: Path,
    server_pid: int,
    *,
    conns: int = 1,
    seconds: float = GRPC_SECONDS,
    api: str = "istio",
) -> Run:
    """tools/ghz/caload: `conns` connections, IN_FLIGHT calls, request i = CSR i mod pool."""
    proc = subprocess.Popen(
        [
            caload, "-api", api, "-addr", target, *tls, "-data", str(data), "-conns", str(conns),
            "-c", str(IN_FLIGHT), "-warmup", f"{GRPC_WARMUP}s", "-z", f"{seconds}s",
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
    total = ok * (GRPC_WARMUP + seconds) / seconds
    return Run(ok / float(report["seconds"]), cpu / ok, client_cpu / total, os.getloadavg()[0])


SPIRE_ROW = "SPIRE, MintX509SVID (admin socket)"
MTLS_ROW = "meshward, mTLS port"
DOOR_ROW = "meshward, :15012 (front door)"


def grpc_rates(csrs: list[str]) -> tuple[list[dict[str, Run]], dict[str, Run]]:
    """(rounds: row -> run, each round every row in turn; reference rows, measured once)."""
    rounds: list[dict[str, Run]] = []
    reference: dict[str, Run] = {}
    with tempfile.TemporaryDirectory(prefix="ca-bench-") as tmp:
        state = Path(tmp) / "state"
        port, mtls_port = _free_port(), _free_port()
        proc = _start_server(state, port, mtls_port)
        address, mtls_address = f"127.0.0.1:{port}", f"127.0.0.1:{mtls_port}"
        spire: SpireServer | None = None
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
                data = files["data"]

                def ours(target: str) -> Callable[[], Run]:
                    return lambda: caload_rate(
                        caload, target, tls, data, proc.pid, conns=CONNS, seconds=ROUND_SECONDS
                    )

                rows = [(MTLS_ROW, ours(mtls_address)), (DOOR_ROW, ours(address))]
                spire_bin = spire_server()
                if spire_bin is not None:
                    spire = SpireServer(spire_bin, Path(tmp) / "spire", _free_port())
                    sock, pid = f"unix://{spire.socket}", spire.pid
                    rows.insert(
                        0,
                        (
                            SPIRE_ROW,
                            lambda: caload_rate(
                                caload,
                                sock,
                                [],
                                data,
                                pid,
                                conns=CONNS,
                                seconds=ROUND_SECONDS,
                                api="spire",
                            ),
                        ),
                    )
                for n in range(ROUNDS):
                    order = rows if n % 2 == 0 else rows[::-1]  # alternate who goes first
                    rounds.append({name: measure() for name, measure in order})
                reference["caload (Go), 1 connection"] = caload_rate(
                    caload, mtls_address, tls, data, proc.pid
                )
            ghz = go_tool("ghz")
            if ghz is not None:
                tls = [
                    "--cacert", str(files["cacert"]), "--cname", SERVER_NAME,
                    "--cert", str(files["cert"]), "--key", str(files["key"]),
                ]  # fmt: skip
                reference["ghz (Go)"] = ghz_rate(
                    ghz, mtls_address, tls, ["-D", str(files["data"])], proc.pid
                )
            reference["grpcio (Python)"] = asyncio.run(
                _python_rate(mtls_address, bundle, node, csrs, proc.pid)
            )
        finally:
            if spire is not None:
                spire.stop()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
    return rounds, reference


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


def serve_native_noop(port: int, directory: str) -> None:
    """`_NoopService` on the native transport (`ca.native_port`), mTLS with the files in
    `directory`: the transport's own cost per call, one worker."""
    from ca.native_port import NativeGrpcPort
    from ca.server import KEEPALIVE_MAX, KEEPALIVE_TIMEOUT, MAX_MESSAGE_BYTES
    from meshward_common.front_door import DoorLimits, listening_socket

    files = Path(directory)

    async def run() -> None:
        server = NativeGrpcPort(
            listening_socket("127.0.0.1", port),
            (files / "server.pem").read_bytes(),
            (files / "server-key.pem").read_bytes(),
            (files / "bundle.pem").read_bytes(),
            limits=DoorLimits(10.0, 300.0, 1024, 1024),
            keepalive=(KEEPALIVE_MAX, KEEPALIVE_TIMEOUT),
            max_message=MAX_MESSAGE_BYTES,
        )
        istio_ca_pb2_grpc.add_IstioCertificateServiceServicer_to_server(_NoopService(), server)
        server.start()
        print("serving on", flush=True)
        await asyncio.Event().wait()

    import uvloop

    uvloop.install()
    asyncio.run(run())


def native_noop_rate() -> Run | None:
    """caload against `serve_native_noop`, over CONNS connections as in the rounds."""
    from ca.authority import cert_pem, key_pem
    from ca.server import issue_server_cert

    caload = go_tool("caload")
    if caload is None:
        return None
    now = dt.datetime.now(dt.UTC)
    cert, key = make_root("cluster.local", now)
    authority = SigningAuthority(cert, key, (), (cert,))
    server = issue_server_cert(authority, "cluster.local", now)
    node_key = ec.generate_private_key(ec.SECP256R1())
    node = issue_svid(
        authority,
        node_key.public_key(),
        node_id("cluster.local", "bench"),
        dt.timedelta(hours=1),
        now,
    )
    with tempfile.TemporaryDirectory(prefix="ca-bench-") as tmp:
        files = Path(tmp)
        for name, data in (
            ("server.pem", server.cert_pem), ("server-key.pem", server.key_pem),
            ("bundle.pem", cert_pem(cert)), ("node.pem", cert_pem(node[0])),
            ("node-key.pem", key_pem(node_key)), ("noop.json", json.dumps([{"csr": "z" * 500}]).encode()),
        ):  # fmt: skip
            (files / name).touch(0o600)
            (files / name).write_bytes(data)
        port = _free_port()
        proc = subprocess.Popen(
            [sys.executable, "-c",
             f"from bench.ca_bench import serve_native_noop; serve_native_noop({port}, {tmp!r})"],
            cwd=REPO, stdout=subprocess.PIPE,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            proc.stdout.readline()
            tls = [
                "-cacert", str(files / "bundle.pem"), "-cname", SERVER_NAME,
                "-cert", str(files / "node.pem"), "-key", str(files / "node-key.pem"),
            ]  # fmt: skip
            return caload_rate(
                caload, f"127.0.0.1:{port}", tls, files / "noop.json", proc.pid, conns=CONNS
            )
        finally:
            proc.kill()
            proc.wait()


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def print_rounds(rounds: list[dict[str, Run]]) -> None:
    if not rounds:
        print("ca: (no Go load generator: install Go; scripts/build_ghz.sh builds caload)")
        return
    names = list(rounds[0])
    for n, run in enumerate(rounds, 1):
        for name in names:
            line = (
                f"ca: round {n}  {name:<33} {run[name].rate:6.0f} SVID/s"
                f"  server CPU {run[name].server_cpu * 1e6:5.0f} us/SVID"
                f"  {run[name].cores()}, load {run[name].load:4.1f}"
            )
            if SPIRE_ROW in run and name != SPIRE_ROW:
                spire = run[SPIRE_ROW]
                line += (
                    f"  {run[name].rate / spire.rate:4.2f}x SPIRE's rate,"
                    f" {run[name].server_cpu / spire.server_cpu:4.2f}x its CPU"
                )
            print(line)
    for name in names:
        rate = _median([r[name].rate for r in rounds])
        cpu = _median([r[name].server_cpu for r in rounds])
        line = f"ca: median   {name:<33} {rate:6.0f} SVID/s  server CPU {cpu * 1e6:5.0f} us/SVID"
        if SPIRE_ROW in rounds[0] and name != SPIRE_ROW:
            rate_ratio = _median([r[name].rate / r[SPIRE_ROW].rate for r in rounds])
            cpu_ratio = _median([r[name].server_cpu / r[SPIRE_ROW].server_cpu for r in rounds])
            line += (
                f"  {rate_ratio:4.2f}x SPIRE's rate, {cpu_ratio:4.2f}x its CPU (per-round ratios)"
            )
        print(line)
    if SPIRE_ROW not in rounds[0]:
        print("ca: (no SPIRE row: scripts/build_spire.sh builds tools/bin/spire-server with Go)")


def main() -> None:
    csrs = make_csrs(POOL)
    rounds, reference = grpc_rates(csrs)
    core = core_rate(csrs)
    noop_client, noop = noop_rate()
    native_noop = native_noop_rate()
    load = os.getloadavg()[0]
    print(
        f"ca: {ROUNDS} rounds of {ROUND_SECONDS:.0f} s per row, the Go client (caload) keeping"
        f" {IN_FLIGHT} calls in flight over {CONNS} connections, a distinct P-256 CSR each"
    )
    print_rounds(rounds)
    print("ca: targets: >= 1.50x SPIRE's SVIDs/s, <= 1.00x its CPU per SVID")
    print(
        f"ca: signing core                {core[0]:6.0f} CSR/s  ({core[1] * 1e6:.0f} us CPU each)"
    )
    for client, run in reference.items():
        print(
            f"ca: mTLS port, {client:<27} {run.rate:6.0f} CSR/s;"
            f" CPU per CSR: server {run.server_cpu * 1e6:.0f} us, client {run.client_cpu * 1e6:.0f} us"
        )
    print(
        f"ca: grpcio no-op unary         {noop.rate:6.0f} calls/s (plaintext, {noop_client} client;"
        f" server {noop.server_cpu * 1e6:.0f} us CPU per call: grpcio's own floor)"
    )
    if native_noop is not None:
        print(
            f"ca: native no-op unary         {native_noop.rate:6.0f} calls/s (mTLS, caload client,"
            f" {CONNS} connections; server {native_noop.server_cpu * 1e6:.0f} us, client"
            f" {native_noop.client_cpu * 1e6:.0f} us CPU per call: the mTLS port's own floor,"
            " one worker)"
        )
    print(
        "ca: bench node's rate limit raised (one node asks far beyond a real node's budget);"
        + (
            f" meshward runs {WORKERS} worker(s) (BENCH_CA_WORKERS)"
            if WORKERS
            else f" meshward runs its default workers ({default_workers()}, one per core)"
        )
    )
    print(
        f"ca: 1-min load average         {load:6.2f}        (2 cores, shared with the client and others)"
    )


if __name__ == "__main__":
    main()
