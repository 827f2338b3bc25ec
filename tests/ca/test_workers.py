"""The CA on every core: `meshward ca serve --workers N`, and the state its processes share, each
property shown with real processes racing for it."""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from ca import audit
from ca.join_tokens import JoinTokenStore
from ca.rate_limit import RateLimiter
from meshward_common.errors import Unauthenticated
from meshward_common.protos import meshward_discovery_pb2 as discovery_pb2
from meshward_common.protos import meshward_discovery_pb2_grpc as discovery_pb2_grpc
from tests.ca import wire
from tests.harness.control_plane import ControlPlane, run_control_plane

REGISTRY = """workloads:
  - name: reviews-v1
    namespace: default
    serviceAccount: reviews
    node: node-1
"""
RACERS = 8
_SPAWN = multiprocessing.get_context("spawn")  # no fork of a process running grpc threads


def _wait_for(condition, timeout: float = 60.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())


# -- the shared state, raced by processes -----------------------------------------------------


def _racer(target, args, barrier, results) -> None:  # type: ignore[no-untyped-def]
    results.put(target(*args, barrier))


def _race(target, args_list: list[tuple[object, ...]]) -> list[object]:  # type: ignore[no-untyped-def]
    """Run target(*args, barrier) in one process per args, all released at once; results."""
    barrier = _SPAWN.Barrier(len(args_list))
    results = _SPAWN.Queue()
    procs = [
        _SPAWN.Process(target=_racer, args=(target, args, barrier, results)) for args in args_list
    ]
    for proc in procs:
        proc.start()
    out = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    return out


def _redeem(state_dir: str, token: str, barrier: multiprocessing.synchronize.Barrier) -> str:
    store = JoinTokenStore(Path(state_dir))
    barrier.wait()
    try:
        return store.redeem(token, dt.datetime.now(dt.UTC))
    except Unauthenticated as exc:
        return f"refused: {exc}"


def test_a_join_token_raced_by_processes_is_redeemed_exactly_once(tmp_path: Path) -> None:
    token = JoinTokenStore(tmp_path).create(
        "node-1", dt.timedelta(hours=1), dt.datetime.now(dt.UTC)
    )
    results = _race(_redeem, [(str(tmp_path), token)] * RACERS)
    assert results.count("node-1") == 1, results
    assert all(r == "refused: join token was already used" for r in results if r != "node-1")


def _draw(state_dir: str, barrier: multiprocessing.synchronize.Barrier) -> int:
    limiter = RateLimiter(Path(state_dir), rate=0.001, burst=50)
    barrier.wait()
    return sum(limiter.allow("node-1", time.monotonic()) for _ in range(40))


def test_processes_drawing_for_one_node_share_its_bucket(tmp_path: Path) -> None:
    allowed = _race(_draw, [(str(tmp_path),)] * RACERS)
    # 320 asks, a burst of 50 and (at 0.001/s) no refill to speak of: 50 allowed in all.
    assert sum(allowed) == 50, allowed  # type: ignore[arg-type]


def _write_audit(path: str, writer: int, barrier: multiprocessing.synchronize.Barrier) -> None:
    log = audit.AuditLog(Path(path))
    barrier.wait()
    now = dt.datetime.now(dt.UTC)
    for n in range(300):
        # Long lines (well past one page) make a torn write show.
        log.write(audit.refused(now, f"writer-{writer}", f"line-{n}", "x" * 5000))
    log.close()


def test_audit_lines_from_racing_processes_stay_whole(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    _race(_write_audit, [(str(path), w) for w in range(RACERS)])
    lines = path.read_text().splitlines()
    assert len(lines) == RACERS * 300
    records = [json.loads(line) for line in lines]  # a torn line would not parse
    for w in range(RACERS):
        mine = [r["identity"] for r in records if r["caller"] == f"writer-{w}"]
        assert mine == [f"line-{n}" for n in range(300)]


# -- the served control plane ------------------------------------------------------------------


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with run_control_plane(
        tmp_path_factory.mktemp("cp"), REGISTRY, extra_args=("--workers", "2")
    ) as plane:
        yield plane


def _own_channel(cp: ControlPlane, credential: wire.Credential | None = None) -> grpc.Channel:
    """A channel with its own connection (grpcio shares connections between equal channels)."""
    creds = grpc.ssl_channel_credentials(
        root_certificates=cp.bundle_pem(),
        private_key=wire.key_pem(credential.key) if credential else None,
        certificate_chain="".join(credential.chain_pem[:-1]).encode() if credential else None,
    )
    return grpc.secure_channel(
        cp.address,
        creds,
        options=[
            ("grpc.ssl_target_name_override", wire.SERVER_NAME),
            ("grpc.use_local_subchannel_pool", 1),
        ],
    )


def test_serve_starts_the_workers_asked_for(cp: ControlPlane) -> None:
    assert len(cp.worker_pids()) == 2
    assert "(2 workers)" in cp.log()


def test_a_join_token_raced_over_many_connections_is_redeemed_once(cp: ControlPlane) -> None:
    token = cp.join_token("node-1")
    channels = [_own_channel(cp) for _ in range(RACERS)]
    for ch in channels:  # connect first, so the calls race and not the handshakes
        grpc.channel_ready_future(ch).result(timeout=30)
    assert sum(cp.connections_per_worker().values()) >= RACERS

    def attempt(ch: grpc.Channel) -> str:
        try:
            wire.create_certificate(ch, wire.make_csr(), token=token)
            return "issued"
        except grpc.RpcError as exc:
            return f"{exc.code().name}: {exc.details()}"

    with ThreadPoolExecutor(RACERS) as pool:
        results = list(pool.map(attempt, channels))
    for ch in channels:
        ch.close()
    assert results.count("issued") == 1, results
    assert all(
        r == "UNAUTHENTICATED: join token was already used" for r in results if r != "issued"
    )


def test_a_registry_change_reaches_every_worker(cp: ControlPlane) -> None:
    node1 = wire.bootstrap(cp.address, cp.bundle_pem(), cp.join_token("node-1"))
    streams: list[tuple[grpc.Channel, Iterator[discovery_pb2.MeshState]]] = []
    # Connections land on whichever worker accepts first: open them until every worker has one.
    while len(streams) < 64:
        ch = _own_channel(cp, node1)
        stream = discovery_pb2_grpc.MeshDiscoveryStub(ch).StreamMeshState(
            discovery_pb2.MeshStateRequest()
        )
        first = next(stream)
        streams.append((ch, stream))
        if len(streams) >= 2 and all(cp.connections_per_worker().values()):
            break
    assert all(cp.connections_per_worker().values()), "every worker holds a stream"
    cp.write_registry(REGISTRY.replace("reviews-v1", "reviews-v2"))
    for ch, stream in streams:
        got = next(stream)
        assert got.version_info != first.version_info
        assert [w.name for w in got.workloads] == ["reviews-v2"]
        ch.close()


def test_a_worker_that_dies_is_replaced(tmp_path: Path) -> None:
    with run_control_plane(tmp_path, REGISTRY, extra_args=("--workers", "2")) as cp:
        victim, survivor = cp.worker_pids()
        os.kill(victim, signal.SIGKILL)
        assert _wait_for(lambda: len(cp.worker_pids()) == 2 and victim not in cp.worker_pids())
        assert survivor in cp.worker_pids()
        assert "CA worker" in cp.log()
        assert "restarting" in cp.log()
        # Whichever worker takes it, a fresh node still bootstraps.
        node = wire.bootstrap(cp.address, cp.bundle_pem(), cp.join_token("node-1"))
        assert node.chain


def test_workers_must_be_a_positive_count(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "meshward", "ca", "serve", "--state-dir", str(tmp_path),
         "--listen", "127.0.0.1:0", "--workers", "0"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode != 0
    assert "workers: 0 is not a number of processes from 1 to 256" in out.stderr
    assert "Traceback" not in out.stderr


async def test_a_csr_is_judged_by_what_was_published_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node agent acts on the state one worker streamed it; its CSR may land on another worker
    that has not polled since. That worker catches up before judging, instead of refusing an
    identity the agent was just told is its own (test_server's discovery test failed so, once)."""
    import asyncio

    import ca.published
    from ca.authority import cert_pem
    from ca.config import build_config
    from ca.published import MESH_STATE
    from ca.server import ControlPlane

    monkeypatch.setattr(ca.published, "POLL_SECONDS", 3600.0)  # the worker never polls itself
    registry = tmp_path / "registry.yaml"
    registry.write_text(REGISTRY)  # reviews on node-1
    cfg = build_config(
        {"listen": "127.0.0.1:0", "state-dir": str(tmp_path / "state"), "registry": str(registry)}
    )
    cp = ControlPlane(cfg)
    await cp.start()
    try:
        assert cp.worker is not None
        assert cp.publisher is not None
        address = f"127.0.0.1:{cp.port}"
        bundle = cert_pem(*cp.authority.roots)
        token = JoinTokenStore(cp.worker.store).create(
            "node-2", dt.timedelta(hours=1), wire.utcnow()
        )
        node2 = await asyncio.to_thread(wire.bootstrap, address, bundle, token)
        reviews = "spiffe://cluster.local/ns/default/sa/reviews"
        refused = await asyncio.to_thread(
            wire.rpc_error, wire.issue, address, bundle, node2, impersonate=reviews
        )
        assert refused.code() == grpc.StatusCode.PERMISSION_DENIED

        registry.write_text(REGISTRY.replace("node-1", "node-2"))
        publisher = cp.publisher
        for _ in range(600):
            published = publisher.store.published_version(MESH_STATE)
            if published == publisher.mesh.state.version_info and any(
                w.node == "node-2" for w in publisher.mesh.registry.workloads
            ):
                break
            await asyncio.sleep(0.05)
        assert any(w.node == "node-2" for w in publisher.mesh.registry.workloads)
        stale = cp.worker.publications.mesh.state.version_info
        assert stale != publisher.mesh.state.version_info, "the worker has not polled"

        cred = await asyncio.to_thread(wire.issue, address, bundle, node2, impersonate=reviews)
        assert cred.chain
        assert cp.worker.publications.mesh.state.version_info == publisher.mesh.state.version_info
    finally:
        await cp.stop()
