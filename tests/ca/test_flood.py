"""Floods at the CA's port 15012 (issue 12, item 4): unauthenticated connections that finish TLS and
the HTTP/2 preface and then hold on, connections that never start TLS, and a stream of garbage
requests, while a node bootstraps and renews. The caps per source and in total, the handshake and
idle deadlines and the descriptor limit raised at start keep the CA serving."""

from __future__ import annotations

import contextlib
import resource
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.ca import wire
from tests.ca.test_hostile_input import CREATE, raw_call
from tests.harness.control_plane import ControlPlane, run_control_plane

REGISTRY = """workloads:
  - name: reviews-v1
    namespace: default
    serviceAccount: reviews
    node: node-1
"""
REVIEWS = "spiffe://cluster.local/ns/default/sa/reviews"
PREFACE = (
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
)  # + SETTINGS
DEADLINE = 30.0


def _tls(cp: ControlPlane) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=cp.bundle_pem().decode())
    ctx.check_hostname = False
    ctx.set_alpn_protocols(["h2"])
    return ctx


def _tcp(cp: ControlPlane, source: str) -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.settimeout(DEADLINE)
    sock.connect(("127.0.0.1", cp.port))
    return sock


def silent_h2(cp: ControlPlane, source: str, ctx: ssl.SSLContext) -> ssl.SSLSocket | None:
    """A caller that completes TLS and the HTTP/2 preface, then says nothing; None if refused."""
    try:
        tls = ctx.wrap_socket(_tcp(cp, source))
        tls.sendall(PREFACE)
    except (OSError, ssl.SSLError):
        return None
    return tls


def closed_by_server(sock: socket.socket) -> bool:
    """Reads (the server's SETTINGS, a GOAWAY) until the server closes; False if it never does."""
    sock.settimeout(DEADLINE)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except (OSError, ssl.SSLError):
        return True
    return True


@contextlib.contextmanager
def soft_descriptor_limit(limit: int) -> Iterator[None]:
    """The usual default soft limit, for the processes started inside (the hard one is kept)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(limit, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _soft_nofile(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no descriptor limit in /proc")


def test_a_node_bootstraps_and_renews_through_a_flood(tmp_path: Path) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard < 4096:
        pytest.fail(f"this test needs a hard descriptor limit of at least 4096, not {hard}")
    # One worker: the caps and the descriptor limit are per worker process.
    cp = ControlPlane(tmp_path, REGISTRY, extra_args=("--workers", "1"))
    with soft_descriptor_limit(1024):
        cp.start()
    held: list[socket.socket] = []
    stop = threading.Event()
    garbage: dict[grpc.StatusCode, int] = {}

    def send_garbage() -> None:
        with wire.channel(cp.address, cp.bundle_pem()) as ch:
            while not stop.is_set():
                code = raw_call(ch, CREATE, b"\xff\xff\xff")
                garbage[code] = garbage.get(code, 0) + 1

    sender = threading.Thread(target=send_garbage, daemon=True)
    try:
        assert cp.proc is not None
        workers = cp.worker_pids()
        assert len(workers) == 1
        # Raised at start, from the 1024 each inherited.
        assert [_soft_nofile(pid) for pid in workers] == [hard] * len(workers)
        ctx = _tls(cp)
        # 8 sources x 60: 480 callers holding TLS + HTTP/2, 3 descriptors each in the CA: more
        # than the 1024 it started with. Each source stays under its cap of 64.
        for n in range(2, 10):
            for _ in range(60):
                sock = silent_h2(cp, f"127.0.0.{n}", ctx)
                assert sock is not None, f"127.0.0.{n} refused under its cap"
                held.append(sock)
        # 100 from one source that never start TLS: 64 wait for their handshake deadline, the
        # rest are refused at once (the log line below says so).
        stalled = [_tcp(cp, "127.0.0.10") for _ in range(100)]
        held.extend(stalled)
        assert closed_by_server(stalled[-1])
        sender.start()
        # Meanwhile, from 127.0.0.1: a node bootstraps, renews its node SVID, gets a workload SVID.
        node = wire.bootstrap(cp.address, cp.bundle_pem(), cp.join_token("node-1"))
        renewed = wire.issue(cp.address, cp.bundle_pem(), node)
        workload = wire.issue(cp.address, cp.bundle_pem(), renewed, impersonate=REVIEWS)
        assert workload.chain[0].public_key() == workload.key.public_key()
    finally:
        stop.set()
        if sender.is_alive():
            sender.join(DEADLINE)
        for sock in held:
            sock.close()
        cp.stop()
    assert garbage
    assert set(garbage) == {grpc.StatusCode.INVALID_ARGUMENT}, garbage
    log = cp.log()
    assert "Traceback" not in log
    refusals = [line for line in log.splitlines() if "connection from 127.0.0.10 refused" in line]
    assert refusals  # said, once per interval
    assert len(refusals) < 36
    assert "127.0.0.10 holds 64 connections (the cap per source)" in refusals[0]


@pytest.fixture
def strict_cp(tmp_path: Path) -> Iterator[ControlPlane]:
    args = (
        *("--workers", "1"),  # the caps are per worker process
        "--handshake-timeout",
        "1s",
        "--idle-timeout",
        "6s",
        "--max-connections-per-source",
        "4",
    )
    with run_control_plane(tmp_path, REGISTRY, extra_args=args) as cp:
        yield cp


def test_handshake_and_idle_deadlines_close_silent_callers(strict_cp: ControlPlane) -> None:
    no_hello = _tcp(strict_cp, "127.0.0.2")
    silent = silent_h2(strict_cp, "127.0.0.3", _tls(strict_cp))
    assert silent is not None
    try:
        assert closed_by_server(no_hello)  # after the 1 s handshake deadline
        assert closed_by_server(silent)  # after 6 s without a byte from it
    finally:
        no_hello.close()
        silent.close()


def test_a_quiet_stream_of_an_honest_client_outlives_the_idle_timeout(
    strict_cp: ControlPlane,
) -> None:
    """The server pings within the idle timeout and gRPC clients answer: a mesh-state stream
    with nothing to say for longer than the timeout stays open and gets the next change."""
    node = wire.bootstrap(strict_cp.address, strict_cp.bundle_pem(), strict_cp.join_token("node-1"))
    with wire.channel(strict_cp.address, strict_cp.bundle_pem(), node) as ch:
        states = wire.stream_states(ch)
        first = next(states)
        time.sleep(8)  # the behaviour under test: longer than the 6 s idle timeout, in silence
        strict_cp.write_registry(REGISTRY.replace("reviews-v1", "reviews-v2"))
        second = next(states)
    assert second.version_info != first.version_info
    assert [w.name for w in second.workloads] == ["reviews-v2"]


def test_the_cap_per_source_refuses_at_accept_and_spares_other_sources(
    strict_cp: ControlPlane,
) -> None:
    ctx = _tls(strict_cp)
    held = [silent_h2(strict_cp, "127.0.0.4", ctx) for _ in range(4)]
    try:
        assert all(held)
        over = _tcp(strict_cp, "127.0.0.4")
        assert closed_by_server(over)  # refused before TLS
        over.close()
        node = wire.bootstrap(
            strict_cp.address, strict_cp.bundle_pem(), strict_cp.join_token("node-1")
        )
        assert node.chain
    finally:
        for sock in held:
            if sock is not None:
                sock.close()
    assert "connection from 127.0.0.4 refused: 127.0.0.4 holds 4 connections" in strict_cp.log()
