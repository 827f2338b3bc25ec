"""The Workload API through the real socket and front door, with unmodified `spiffe` clients."""

from __future__ import annotations

import datetime as dt
import os
import threading
import time

import grpc
import pytest
from spiffe import WorkloadApiClient, X509Source
from spiffe._proto import workload_pb2, workload_pb2_grpc

from meshward_common.protos import meshward_discovery_pb2 as mdpb
from meshward_common.protos import meshward_discovery_pb2_grpc as mdpb_grpc
from meshward_common.registry import Selector, Workload
from meshward_common.svid import verify_x509_svid
from tests.node_agent.inprocess import InProcessAgent

HEADER = (("workload.spiffe.io", "true"),)
ME = Workload(
    name="me", namespace="default", service_account="tester", node="node-1",
    selector=Selector(netns="host", uids=(os.getuid(),)),
)  # fmt: skip
OTHER_UID = Workload(
    name="other", namespace="default", service_account="other", node="node-1",
    selector=Selector(netns="host", uids=(4321,)),
)  # fmt: skip
ELSEWHERE = Workload(
    name="elsewhere", namespace="default", service_account="elsewhere", node="node-2",
    selector=Selector(netns="host", uids=(os.getuid(),)),
)  # fmt: skip
MY_ID = "spiffe://cluster.local/ns/default/sa/tester"


@pytest.fixture
def agent():
    a = InProcessAgent(ttl=dt.timedelta(seconds=4)).start()
    try:
        yield a
    finally:
        a.stop()


def wait_until(predicate, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def raw_channel(agent):
    return grpc.insecure_channel(f"unix:{agent.socket_path}")


def first_svid_error(agent, metadata):
    with raw_channel(agent) as channel:
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            next(
                iter(
                    stub.FetchX509SVID(
                        workload_pb2.X509SVIDRequest(), metadata=metadata, timeout=10
                    )
                )
            )
    return err.value


def check_svid(svid, bundle_certs, now=None):
    now = now or dt.datetime.now(dt.UTC)
    assert str(verify_x509_svid(list(svid.cert_chain), bundle_certs, now)) == MY_ID
    assert svid.leaf.public_key() == svid.private_key.public_key()


def test_x509_source_gets_svid_and_receives_rotations_with_valid_chains(agent):
    agent.set_registry([ME, OTHER_UID, ELSEWHERE])
    source = X509Source(socket_path=agent.endpoint, timeout_in_seconds=15)
    updates = []
    source.subscribe_for_updates(lambda: updates.append(source.get_x509_context().default_svid))
    try:
        ctx = source.get_x509_context()
        svid = ctx.default_svid
        assert str(svid.spiffe_id) == MY_ID
        bundle = ctx.x509_bundle_set.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
        assert bundle is not None
        roots = list(bundle.x509_authorities)
        check_svid(svid, roots)
        serials = {svid.leaf.serial_number}
        # TTL 4s: renewed at ~2s (+-0.4s); wait for two rotations
        wait_until(
            lambda: len({s.leaf.serial_number for s in updates} | serials) >= 3, 20, "two rotations"
        )
        for s in list(updates):
            check_svid(s, roots, now=s.leaf.not_valid_before_utc + dt.timedelta(seconds=1))
        assert not source.is_closed()
    finally:
        source.close()
    assert agent.issued.count(agent.issued[0]) >= 3
    assert {str(i) for i in agent.issued} == {MY_ID}  # never asked for another workload's identity


def test_fetch_x509_bundles_gets_the_bundle(agent):
    agent.set_registry([ME])
    with WorkloadApiClient(socket_path=agent.endpoint) as client:
        bundles = client.fetch_x509_bundles(timeout=10)
    [bundle] = list(bundles.bundles)
    assert bundle.trust_domain.name == "cluster.local"
    assert list(bundle.x509_authorities) == [agent.ca.root]


def test_call_without_security_header_is_invalid_argument(agent):
    agent.set_registry([ME])
    err = first_svid_error(agent, None)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    err = first_svid_error(agent, (("workload.spiffe.io", "false"),))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_caller_matching_no_workload_is_permission_denied(agent):
    agent.set_registry(
        [OTHER_UID, ELSEWHERE]
    )  # right netns but wrong uid; right uid but other node
    err = first_svid_error(agent, HEADER)
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert agent.issued == []


def test_connection_bypassing_the_front_door_is_permission_denied(agent):
    agent.set_registry([ME])
    with grpc.insecure_channel(f"127.0.0.1:{agent.port}") as channel:
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            next(
                iter(
                    stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER, timeout=10)
                )
            )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_jwt_methods_are_unimplemented(agent):
    agent.set_registry([ME])
    with raw_channel(agent) as channel:
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.FetchJWTSVID(
                workload_pb2.JWTSVIDRequest(audience=["x"]), metadata=HEADER, timeout=10
            )
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        with pytest.raises(grpc.RpcError) as err:
            next(
                iter(
                    stub.FetchJWTBundles(
                        workload_pb2.JWTBundlesRequest(), metadata=HEADER, timeout=10
                    )
                )
            )
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_ca_down_keeps_serving_current_svid_and_rotation_resumes(agent):
    agent.set_registry([ME])
    source = X509Source(socket_path=agent.endpoint, timeout_in_seconds=15)
    try:
        first = source.get_x509_context().default_svid
        agent.ca_up = False
        # at least two renewal attempts refused (renewal and a retry), before expiry
        wait_until(lambda: agent.refused >= 2, 10, "renewal attempts while the CA is down")
        assert dt.datetime.now(dt.UTC) < first.leaf.not_valid_after_utc
        current = source.get_x509_context().default_svid
        assert current.leaf.serial_number == first.leaf.serial_number
        assert not source.is_closed()
        agent.ca_up = True
        wait_until(
            lambda: source.get_x509_context().default_svid.leaf.serial_number != first.leaf.serial_number,
            15, "rotation after the CA came back",
        )  # fmt: skip
        assert str(source.get_x509_context().default_svid.spiffe_id) == MY_ID
    finally:
        source.close()


def test_bundle_change_reaches_every_open_stream(agent):
    agent.set_registry([ME])
    sources = [X509Source(socket_path=agent.endpoint, timeout_in_seconds=15) for _ in range(2)]
    try:
        new_root = agent.rotate_root().root
        agent.call_soon(lambda: agent.state.set_bundle([*agent.state.bundle, new_root]))

        def has_both(source):
            ctx = source.get_x509_context()
            bundle = ctx.x509_bundle_set.get_bundle_for_trust_domain(
                ctx.default_svid.spiffe_id.trust_domain
            )
            return new_root in list(bundle.x509_authorities)

        for s in sources:
            wait_until(lambda s=s: has_both(s), 10, "new root on every stream")
    finally:
        for s in sources:
            s.close()


def test_mesh_state_is_relayed_to_attested_callers_and_updated(agent):
    agent.set_registry([ME])
    received: list[mdpb.MeshState] = []
    codes: list[grpc.StatusCode] = []
    with raw_channel(agent) as channel:
        stub = mdpb_grpc.MeshDiscoveryStub(channel)
        call = stub.StreamMeshState(mdpb.MeshStateRequest(), metadata=HEADER)

        def read():
            try:
                for m in call:
                    received.append(m)
            except grpc.RpcError as exc:
                codes.append(exc.code())

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        wait_until(lambda: len(received) >= 1, 10, "first mesh state")
        agent.set_registry([ME, OTHER_UID])
        wait_until(lambda: len(received) >= 2, 10, "updated mesh state")
        call.cancel()
        reader.join(5)
    assert codes == [grpc.StatusCode.CANCELLED]
    assert [len(m.workloads) for m in received[:2]] == [1, 2]
    assert received[1].workloads[1].netns == "host"
    assert received[0].version_info != received[1].version_info


def test_mesh_state_needs_an_identity_and_the_header(agent):
    agent.set_registry([OTHER_UID])
    with raw_channel(agent) as channel:
        stub = mdpb_grpc.MeshDiscoveryStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            next(iter(stub.StreamMeshState(mdpb.MeshStateRequest(), metadata=HEADER, timeout=10)))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as err:
            next(iter(stub.StreamMeshState(mdpb.MeshStateRequest(), timeout=10)))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_stream_ends_with_permission_denied_when_the_caller_leaves_the_registry(agent):
    agent.set_registry([ME])
    with raw_channel(agent) as channel:
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
        stream = iter(
            stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER, timeout=20)
        )
        first = next(stream)
        assert [s.spiffe_id for s in first.svids] == [MY_ID]
        agent.set_registry([OTHER_UID])
        with pytest.raises(grpc.RpcError) as err:
            next(stream)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_malformed_request_is_invalid_argument_not_unknown(agent):
    agent.set_registry([ME])
    with raw_channel(agent) as channel:
        fetch = channel.unary_stream("/SpiffeWorkloadAPI/FetchX509SVID")
        with pytest.raises(grpc.RpcError) as err:
            next(iter(fetch(b"\xff\xff\xff", metadata=HEADER, timeout=10)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "is not a valid message" in err.value.details()
