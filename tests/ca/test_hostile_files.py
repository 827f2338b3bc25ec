"""The control plane for real (`meshward ca serve`) with broken, hostile and very large policy
files: it starts with them present (each refused in one line), keeps issuing while they are read,
keeps serving its last good state, and bounds the mesh state it sends (both sides agree)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from meshward_common.limits import MESH_STATE_MAX_BYTES, MESH_STATE_MESSAGE_LIMIT
from meshward_common.protos import meshward_discovery_pb2 as discovery_pb2
from meshward_common.protos import meshward_discovery_pb2_grpc as discovery_pb2_grpc
from tests.ca import wire
from tests.harness.control_plane import ControlPlane, run_control_plane
from tests.harness.node_agent import run_node_agent

pytestmark = pytest.mark.slow

REGISTRY = "workloads:\n  - {name: a, namespace: default, serviceAccount: a, node: node-1}\n"
HEAD = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\n"
GOOD = HEAD.format(name="good") + "  namespace: default\nspec:\n  action: DENY\n  rules: [{}]\n"


def laughs(name: str) -> str:
    lines = [HEAD.format(name=name).rstrip("\n"), 'x:\n  a0: &a0 ["lol"]']
    for i in range(1, 10):
        lines.append(f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]")
    return "\n".join([*lines, "spec:\n  action: *a9"]) + "\n"


def wait_for(
    what: str, check: Callable[[], bool], log: Callable[[], str], timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    pytest.fail(f"{what} not within {timeout}s\n{log()[-3000:]}")


def current_state(cp: ControlPlane, node: wire.Credential) -> discovery_pb2.MeshState:
    with wire.channel(cp.address, cp.bundle_pem(), node) as ch:
        stub = discovery_pb2_grpc.MeshDiscoveryStub(ch)
        call = stub.StreamMeshState(discovery_pb2.MeshStateRequest(), timeout=30)
        try:
            return next(iter(call))
        finally:
            call.cancel()


def refusals(cp: ControlPlane) -> list[str]:
    marker = "policy refused, keeping the last good version: "
    return [line.split(marker, 1)[1] for line in cp.log().splitlines() if marker in line]


def test_the_ca_starts_with_bad_files_keeps_issuing_while_reading_them_and_keeps_the_last_good(
    tmp_path: Path,
) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    files = {
        "good.yaml": GOOD,
        "api.yaml": "apiVersion: [a]\nkind: AuthorizationPolicy\nmetadata: {name: x}\n",
        "kind.yaml": "apiVersion: security.istio.io/v1\nkind: {a: 1}\nmetadata: {name: x}\n",
        "int.yaml": HEAD.format(name="i") + "spec:\n  action: !!int a\n",
        "laughs.yaml": laughs("l"),
        "deep.yaml": HEAD.format(name="d") + "spec: " + "[" * 5000 + "]" * 5000 + "\n",
    }
    for name, text in files.items():
        (policies / name).write_text(text)
    with run_control_plane(tmp_path, REGISTRY, policy_dir=policies) as cp:
        p = policies
        assert sorted(refusals(cp)) == sorted([
            f"{p / 'api.yaml'}:1: apiVersion: a list is not one of security.istio.io/v1, security.istio.io/v1beta1",
            f"{p / 'kind.yaml'}:2: kind: a mapping is not AuthorizationPolicy or PeerAuthentication",
            f"{p / 'int.yaml'}:6: yaml: !!int cannot hold 'a'",
            f"{p / 'laughs.yaml'}:11: yaml: more than 100000 values once aliases are expanded (the limit for policy files)",
            f"{p / 'deep.yaml'}:5: yaml: nested deeper than 64 levels (the limit for policy files)",
        ])  # fmt: skip
        assert "Traceback" not in cp.log()
        node = wire.bootstrap(cp.address, cp.bundle_pem(), cp.join_token("node-1"))
        served = current_state(cp, node)
        assert [(d.source, d.yaml) for d in served.policies] == [("good.yaml", GOOD)]

        # Certificates keep coming while hostile files arrive and are read.
        issued, failed = [], []
        stop = threading.Event()

        def issue_continuously() -> None:
            while not stop.is_set():
                try:
                    wire.issue(cp.address, cp.bundle_pem(), node)  # 10 s deadline each
                    issued.append(1)
                except grpc.RpcError as exc:
                    failed.append(f"{exc.code()}: {exc.details()}")

        worker = threading.Thread(target=issue_continuously)
        worker.start()
        try:
            before = len(refusals(cp))
            (policies / "good.yaml").write_text(laughs("good"))  # the good file gone bad
            for i in range(3):
                (policies / f"more-{i}.yaml").write_text(laughs(f"m{i}"))
            wait_for("the hostile files refused", lambda: len(refusals(cp)) >= before + 4, cp.log)
            count = len(issued)
            wait_for("more certificates after that", lambda: len(issued) > count + 2, cp.log)
        finally:
            stop.set()
            worker.join(timeout=60)
        assert failed == []
        assert len(issued) > 3
        assert refusals(cp)[before:] == [
            f"{p / n}:11: yaml: more than 100000 values once aliases are expanded (the limit for policy files)"
            for n in ("good.yaml", "more-0.yaml", "more-1.yaml", "more-2.yaml")
        ]  # fmt: skip
        after = current_state(cp, node)
        assert after.version_info == served.version_info  # the last good state, as it was
        assert [(d.source, d.yaml) for d in after.policies] == [("good.yaml", GOOD)]


def big_policy(index: int, principals: int) -> str:
    listed = "".join(
        f"        - cluster.local/ns/p{index}/sa/caller-{i:06d}\n" for i in range(principals)
    )
    return (
        HEAD.format(name=f"big-{index:02d}")
        + "  namespace: default\nspec:\n  rules:\n  - from:\n    - source:\n        principals:\n"
        + listed
    )


def test_a_large_mesh_state_reaches_the_agent_and_one_over_the_bound_is_refused_naming_the_file(
    tmp_path: Path,
) -> None:
    # gRPC's default 4 MB limit broke distribution for a 6 MB policy set. Here: files of ~1 MB
    # (within the per-file bound) until the state would cross MESH_STATE_MAX_BYTES.
    policies = tmp_path / "policies"
    policies.mkdir()
    per_file = big_policy(0, 19_000)
    files = MESH_STATE_MAX_BYTES // len(per_file) + 2  # the last ones cannot fit
    for i in range(7):  # ~7 MB to start with
        (policies / f"big-{i:02d}.yaml").write_text(big_policy(i, 19_000))
    with (
        run_control_plane(tmp_path, REGISTRY, policy_dir=policies) as cp,
        run_node_agent(tmp_path, cp) as agent,
    ):
        node = wire.bootstrap(cp.address, cp.bundle_pem(), cp.join_token("node-2"))
        first = current_state(cp, node)
        assert first.ByteSize() > 6_000_000
        wait_for(
            "the agent holding the 7 MB state",
            lambda: f"mesh state {first.version_info}:" in agent.log(),
            agent.log,
        )
        for i in range(7, files):  # each file whole at once, as a ConfigMap update is
            tmp = policies / f".big-{i:02d}.tmp"
            tmp.write_text(big_policy(i, 19_000))
            tmp.rename(policies / f"big-{i:02d}.yaml")
        wait_for(
            "the files over the bound refused",
            lambda: sum("the mesh state would exceed" in r for r in refusals(cp)) >= 2,
            cp.log,
            180,
        )
        refused_names = {r.split(":", 1)[0].rsplit("/", 1)[1] for r in refusals(cp)}
        every_other = sorted({f"big-{i:02d}.yaml" for i in range(files)} - refused_names)
        wait_for(
            "the state with every file not refused",
            lambda: [d.source for d in current_state(cp, node).policies] == every_other,
            cp.log,
        )
        full = current_state(cp, node)
        kept = [d.source for d in full.policies]
        assert full.ByteSize() <= MESH_STATE_MAX_BYTES
        assert full.ByteSize() > MESH_STATE_MAX_BYTES - len(per_file) - 4096  # it was filled up
        refused = [f"big-{i:02d}.yaml" for i in range(len(kept), files)]
        assert kept == [f"big-{i:02d}.yaml" for i in range(len(kept))]
        assert refusals(cp) == [
            f"{policies / name}:1: file: the mesh state would exceed {MESH_STATE_MAX_BYTES} bytes "
            "with it (the mesh state's bound, MESH_STATE_MAX_BYTES)"
            for name in refused
        ]
        wait_for(
            "the agent holding the full state",
            lambda: f"mesh state {full.version_info}:" in agent.log(),
            agent.log,
            120,
        )
        assert "RESOURCE_EXHAUSTED" not in agent.log()
    assert MESH_STATE_MESSAGE_LIMIT > MESH_STATE_MAX_BYTES
