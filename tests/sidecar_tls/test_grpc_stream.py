"""The sidecar's own gRPC stream client (h2) and the X509SVIDResponse wire decoder: against a
scripted h2 server for the broken cases, and against the real node agent for the real ones."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import struct
from collections.abc import AsyncIterator, Callable

import pytest
from cryptography.hazmat.primitives import serialization
from spiffe._proto import workload_pb2

from meshward_common.errors import SvidError
from meshward_common.protos import meshward_discovery_pb2 as mdpb
from meshward_common.registry import Selector, Workload
from sidecar_tls.destinations import MeshSnapshot
from sidecar_tls.identity import WorkloadApiSvidSource, WorkloadIdentity
from sidecar_tls.sidecar import Sidecar, SidecarConfig
from sidecar_tls.telemetry.observe import NoopObserver
from sidecar_tls.workload_api.grpc_stream import (
    WORKLOAD_API_METADATA,
    GrpcCallError,
    MessageReader,
    follow_stream,
    frame_message,
    server_stream,
)
from sidecar_tls.workload_api.mesh_state import STREAM_MESH_STATE, follow_mesh_state
from sidecar_tls.workload_api.x509svid_wire import decode_x509svid_response, split_der_certificates
from tests.node_agent.inprocess import InProcessAgent
from tests.sidecar_tls.fake_grpc import Script, fake_grpc_server
from tests.sidecar_tls.testca import MiniCA

ME = Workload(
    name="me", namespace="default", service_account="tester", node="node-1",
    selector=Selector(netns="host", uids=(os.getuid(),)),
)  # fmt: skip
MY_ID = "spiffe://cluster.local/ns/default/sa/tester"
FETCH = "/SpiffeWorkloadAPI/FetchX509SVID"


def der_chain(identity: WorkloadIdentity) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.DER) for c in identity.chain)


def svid_response(identity: WorkloadIdentity, **federated: bytes) -> bytes:
    """An X509SVIDResponse made by the spiffe package's generated code (the reference encoder)."""
    key = identity.key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    roots = b"".join(r.public_bytes(serialization.Encoding.DER) for r in identity.all_roots())
    return workload_pb2.X509SVIDResponse(
        svids=[
            workload_pb2.X509SVID(
                spiffe_id=str(identity.spiffe_id),
                x509_svid=der_chain(identity),
                x509_svid_key=key,
                bundle=roots,
                hint="internal",
            )
        ],
        crl=[b"crl-bytes"],
        federated_bundles=federated,
    ).SerializeToString()


async def wait_for(predicate: Callable[[], bool], what: str, within_s: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def collect(stream: AsyncIterator[bytes], into: list[bytes]) -> None:
    async for message in stream:
        into.append(message)


# --- the wire decoder ------------------------------------------------------------------------


def test_decoder_reads_what_the_generated_code_writes() -> None:
    ca, other = MiniCA.create(), MiniCA.create("example.org", "other root")
    identity = ca.issue(MY_ID)
    other_roots = other.cert.public_bytes(serialization.Encoding.DER)
    decoded = decode_x509svid_response(
        svid_response(identity, **{"spiffe://example.org": other_roots})
    )
    (svid,) = decoded.svids
    assert svid.spiffe_id == MY_ID
    assert svid.x509_svid == der_chain(identity)
    assert svid.hint == "internal"
    assert decoded.crl == (b"crl-bytes",)
    assert decoded.federated_bundles == {"spiffe://example.org": other_roots}
    assert split_der_certificates(svid.x509_svid) == [
        c.public_bytes(serialization.Encoding.DER) for c in identity.chain
    ]
    assert "x509_svid_key" not in repr(svid)  # the key never shows up in logs


def test_decoder_skips_unknown_fields() -> None:
    ca = MiniCA.create()
    message = svid_response(ca.issue(MY_ID))
    unknown = bytes([(9 << 3) | 0, 42, (10 << 3) | 5]) + b"abcd" + bytes([(11 << 3) | 2, 1, 0])
    assert decode_x509svid_response(unknown + message).svids[0].spiffe_id == MY_ID


@pytest.mark.parametrize(
    "data",
    [
        b"\x0a\x05abc",  # field 1 claims 5 bytes, 3 follow
        b"\x0a",  # truncated length
        b"\x0b",  # wire type 3 (start group, never used by proto3)
    ],
)
def test_malformed_responses_give_one_clear_error(data: bytes) -> None:
    with pytest.raises(SvidError) as err:
        decode_x509svid_response(data)
    assert str(err.value).startswith("malformed X509SVIDResponse from the Workload API")
    assert "\n" not in str(err.value)


def test_der_splitter_refuses_garbage() -> None:
    for data, problem in ((b"\x02\x01\x00", "no DER SEQUENCE"), (b"\x30\x05ab", "runs past")):
        with pytest.raises(ValueError, match=problem):
            split_der_certificates(data)


# --- framing -----------------------------------------------------------------------------------


def test_message_reader_splits_and_waits_for_partial_messages() -> None:
    reader = MessageReader(FETCH)
    stream = frame_message(b"one") + frame_message(b"") + frame_message(b"three")
    assert reader.feed(stream[:4]) == []
    assert reader.feed(stream[4:15]) == [b"one", b""]
    assert reader.pending == 2
    assert reader.feed(stream[15:]) == [b"three"]
    assert reader.pending == 0


def test_message_reader_refuses_compressed_and_oversized_messages() -> None:
    with pytest.raises(GrpcCallError, match="INTERNAL: server sent a compressed message"):
        MessageReader(FETCH).feed(struct.pack(">BI", 1, 3) + b"abc")
    with pytest.raises(GrpcCallError, match="RESOURCE_EXHAUSTED"):
        MessageReader(FETCH).feed(struct.pack(">BI", 0, 1 << 30))


# --- the client against a scripted server ------------------------------------------------------


async def test_stream_sends_the_header_and_request_and_yields_every_message() -> None:
    async with fake_grpc_server() as server:
        server.script = Script(messages=[b"a", b"b" * 100_000, b"c"])
        got = [
            m
            async for m in server_stream(
                str(server.socket_path), FETCH, b"req", WORKLOAD_API_METADATA
            )
        ]
    assert got == [b"a", b"b" * 100_000, b"c"]  # 100 kB: beyond the initial flow-control window
    (call,) = server.calls
    assert call.path == FETCH
    assert call.request == b"req"
    assert call.headers["workload.spiffe.io"] == "true"
    assert call.headers["content-type"] == "application/grpc"
    assert call.headers["te"] == "trailers"


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        (Script(ending="status", status=7, message="caller%20not%20attested"),
         "/SpiffeWorkloadAPI/FetchX509SVID: PERMISSION_DENIED: caller not attested"),
        (Script(ending="trailers-only", status=3, message="security header missing"),
         "INVALID_ARGUMENT: security header missing"),
        (Script(messages=[b"x"], ending="drop"), "UNAVAILABLE: connection"),
        (Script(messages=[b"x"], ending="no-trailers"), "UNKNOWN: stream ended without grpc-status"),  # closed or reset
    ],
)  # fmt: skip
async def test_errors_end_the_stream_with_the_status_and_message(
    script: Script, expected: str
) -> None:
    async with fake_grpc_server() as server:
        server.script = script
        got: list[bytes] = []
        with pytest.raises(GrpcCallError) as err:
            await collect(server_stream(str(server.socket_path), FETCH, b""), got)
    assert expected in str(err.value)
    assert got == script.messages


async def test_no_server_is_unavailable() -> None:
    with pytest.raises(GrpcCallError, match=r"UNAVAILABLE: cannot connect to /nonexistent/x\.sock"):
        await collect(server_stream("unix:///nonexistent/x.sock", FETCH, b""), [])


async def test_follow_stream_reconnects_with_backoff_after_errors() -> None:
    async with fake_grpc_server() as server:
        server.script = Script(ending="status", status=14, message="agent restarting")
        got: list[bytes] = []
        task = asyncio.create_task(
            follow_stream(
                str(server.socket_path), FETCH, lambda: b"", got.append, what="test",
                initial_backoff=0.05, max_backoff=0.1,
            )
        )  # fmt: skip
        try:
            await wait_for(lambda: len(server.calls) >= 3, "three refused attempts")
            assert got == []
            server.script = Script(messages=[b"finally"], ending="hold")
            await wait_for(lambda: got == [b"finally"], "the message after recovery")
        finally:
            task.cancel()


async def test_malformed_svid_is_refused_in_one_line_and_the_last_good_one_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ca = MiniCA.create()
    good, next_good = ca.issue(MY_ID), ca.issue(MY_ID)
    async with fake_grpc_server() as server:
        server.script = Script(messages=[svid_response(good), b"\x0a\x05abc"], ending="hold")
        source = WorkloadApiSvidSource(str(server.socket_path), initial_backoff=0.05)
        await source.start()
        try:
            await wait_for(lambda: source.rejected == 1, "the malformed message")
            assert source.current().leaf == good.leaf
            (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
            assert "unusable SVID, keeping the last one: malformed X509SVIDResponse" in line
            assert "\n" not in line
            # A response whose key is not the leaf's is refused too; the stream goes on.
            mismatched = WorkloadIdentity(good.chain, next_good.key, good.bundles)
            server.script = Script(
                messages=[svid_response(mismatched), svid_response(next_good)], ending="hold"
            )
            for writer in server._writers:  # drop the connection: the source reconnects
                writer.close()
            await wait_for(lambda: source.current().leaf == next_good.leaf, "the next SVID")
            assert source.rejected == 2
            assert any("key does not match the leaf" in r.getMessage() for r in caplog.records)
        finally:
            source.close()


# --- against the real node agent ---------------------------------------------------------------


@pytest.fixture
def agent():
    a = InProcessAgent(ttl=dt.timedelta(seconds=3)).start()
    try:
        yield a
    finally:
        a.stop()


async def test_svid_source_gets_and_rotates_svids_from_the_agent(agent: InProcessAgent) -> None:
    agent.set_registry([ME])
    source = WorkloadApiSvidSource(str(agent.socket_path))
    seen: list[WorkloadIdentity] = []
    source.subscribe(seen.append)
    await source.start()
    try:
        await wait_for(lambda: len(seen) >= 2, "a rotation")
    finally:
        source.close()
    assert {str(i.spiffe_id) for i in seen} == {MY_ID}
    assert seen[0].leaf.serial_number != seen[1].leaf.serial_number
    assert seen[1].key.public_key() == seen[1].leaf.public_key()
    assert sorted(seen[1].bundles) == ["cluster.local"]


async def test_agent_refusals_reach_the_client_as_statuses(agent: InProcessAgent) -> None:
    agent.set_registry([])  # nobody is registered: this process is not attested
    with pytest.raises(GrpcCallError, match="PERMISSION_DENIED"):
        await collect(server_stream(str(agent.socket_path), FETCH, b"", WORKLOAD_API_METADATA), [])
    with pytest.raises(GrpcCallError, match="INVALID_ARGUMENT: security header missing"):
        await collect(server_stream(str(agent.socket_path), FETCH, b""), [])


async def test_streams_survive_an_agent_restart_keeping_the_last_state_and_svid() -> None:
    agent = InProcessAgent(ttl=dt.timedelta(seconds=30)).start()
    second: InProcessAgent | None = None
    snapshots: list[MeshSnapshot] = []
    task: asyncio.Task[None] | None = None
    svids = WorkloadApiSvidSource(str(agent.socket_path), initial_backoff=0.1)
    try:
        agent.set_registry([ME])
        task = asyncio.create_task(
            follow_mesh_state(str(agent.socket_path), snapshots.append, initial_backoff=0.1)
        )
        await svids.start()
        await wait_for(lambda: [s.version for s in snapshots] == ["v1"], "v1")
        await wait_for(lambda: svids.ready, "the first SVID")
        first_root = svids.current().bundles["cluster.local"]
        agent.set_registry([ME])
        await wait_for(lambda: [s.version for s in snapshots] == ["v1", "v2"], "v2")
        assert snapshots[-1].find("me", "default") is not None
        # The agent goes away; a new one comes up on the same socket with a newer state.
        path = agent.socket_path
        await asyncio.to_thread(agent.stop)
        await asyncio.sleep(0.3)  # the client is now retrying against a missing socket
        assert [s.version for s in snapshots] == ["v1", "v2"]  # the last state is kept
        assert svids.current().bundles["cluster.local"] == first_root  # and the last SVID
        second = InProcessAgent(ttl=dt.timedelta(seconds=30))
        second.socket_path = path
        path.parent.mkdir(exist_ok=True)
        await asyncio.to_thread(second.start)
        second.version = 2
        second.set_registry([ME])
        await wait_for(lambda: snapshots[-1].version == "v3", "v3 from the new agent")
        # The new agent has another CA: its SVID replaces the old one once the stream is back.
        await wait_for(
            lambda: svids.current().bundles["cluster.local"] != first_root, "the new agent's SVID"
        )
        assert str(svids.current().spiffe_id) == MY_ID
    finally:
        svids.close()
        if task is not None:
            task.cancel()
        if second is not None:
            await asyncio.to_thread(second.stop)
        else:
            await asyncio.to_thread(agent.stop)
    assert [s.version for s in snapshots] == ["v1", "v2", "v3"]


async def test_mesh_state_resends_the_last_version_and_skips_bad_messages(
    caplog: pytest.LogCaptureFixture,
) -> None:
    state = mdpb.MeshState(version_info="v5", trust_domain="cluster.local").SerializeToString()
    async with fake_grpc_server() as server:
        server.script = Script(messages=[state, b"\xff\xff"], ending="drop")
        snapshots: list[MeshSnapshot] = []
        task = asyncio.create_task(
            follow_mesh_state(str(server.socket_path), snapshots.append, initial_backoff=0.05)
        )
        try:
            await wait_for(lambda: len(server.calls) >= 2, "a reconnect")
        finally:
            task.cancel()
    assert server.calls[0].path == STREAM_MESH_STATE
    assert mdpb.MeshStateRequest.FromString(server.calls[0].request).version_info == ""
    assert mdpb.MeshStateRequest.FromString(server.calls[1].request).version_info == "v5"
    assert {s.version for s in snapshots} == {"v5"}
    assert any("mesh state message unusable, keeping version 'v5'" in r.getMessage()
               for r in caplog.records)  # fmt: skip


# --- the whole sidecar against the agent: readiness, rotation, admin -------------------------


async def http_get_json(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_sidecar_becomes_ready_from_the_agent_and_serves_rotated_svids(
    agent: InProcessAgent,
) -> None:
    config = SidecarConfig(
        agent_socket=str(agent.socket_path), pod_ip="127.0.0.1", workload="me",
        namespace="default", bind="127.0.0.1", outbound_port=0, inbound_port=0,
        health_port=0, admin_port=0, metrics_port=0,
    )  # fmt: skip
    sidecar = Sidecar(config, observer=NoopObserver())
    await sidecar.start()
    try:
        assert sidecar.health_server is not None
        assert sidecar.admin_server is not None
        health, admin = sidecar.health_server.port, sidecar.admin_server.port
        assert (await http_get_json(health, "/healthz/ready"))[0] == 503  # no SVID yet
        agent.set_registry([ME])
        await wait_for(lambda: sidecar.ready(), "readiness")
        assert (await http_get_json(health, "/healthz/ready"))[0] == 200
        first = sidecar.state.material.generation
        await wait_for(lambda: sidecar.state.material.generation > first, "a rotation")
        status, body = await http_get_json(admin, "/certs")
        (cert,) = json.loads(body)["certificates"]
        assert (status, cert["spiffe_id"]) == (200, MY_ID)
        leaf = sidecar.state.material.identity.leaf
        assert cert["serial_number"] == format(leaf.serial_number, "x")
        status, body = await http_get_json(admin, "/config_dump")
        assert json.loads(body)["mesh_state_version"] == "v1"
    finally:
        await sidecar.stop()
