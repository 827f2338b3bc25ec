"""Bad input at the CA's port, from callers with and without a certificate, over a real socket:
always INVALID_ARGUMENT, UNAUTHENTICATED, PERMISSION_DENIED or RESOURCE_EXHAUSTED (never INTERNAL or
UNKNOWN), one log line per source per interval (never a traceback), and the CA keeps issuing."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshward_common.protos import istio_ca_pb2
from tests.ca import wire
from tests.harness.control_plane import ControlPlane, run_control_plane

REGISTRY = """workloads:
  - name: reviews-v1
    namespace: default
    serviceAccount: reviews
    node: node-1
"""
CREATE = "/istio.v1.auth.IstioCertificateService/CreateCertificate"
STREAM = "/meshward.v1.MeshDiscovery/StreamMeshState"
REVIEWS = "spiffe://cluster.local/ns/default/sa/reviews"
ACCEPTABLE = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,  # gRPC's own message limit, before any of our code
}
GARBAGE = [b"\xff\xff\xff", b"\x0a\x05abc", b"\x12\x01", b"\x1a\xff\xff\xff\xff\x0f", b"\x08" * 9]


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with run_control_plane(
        tmp_path_factory.mktemp("hostile"),
        REGISTRY,
        extra_args=("--rate-limit", "100000", "--rate-burst", "100000"),
    ) as plane:
        yield plane


@pytest.fixture(scope="module")
def node1(cp: ControlPlane) -> wire.Credential:
    return wire.bootstrap(cp.address, cp.bundle_pem(), cp.join_token("node-1"))


def raw_call(ch: grpc.Channel, method: str, data: bytes) -> grpc.StatusCode:
    """One call with `data` as the request's bytes, exactly as a hostile client sends them."""
    try:
        if method == STREAM:
            for _ in ch.unary_stream(method)(data, timeout=10):
                break
        else:
            ch.unary_unary(method)(data, timeout=10)
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_a_csr_with_version_other_than_0_is_invalid_argument(
    cp: ControlPlane, node1: wire.Credential
) -> None:
    with wire.channel(cp.address, cp.bundle_pem(), node1) as ch:
        err = wire.rpc_error(wire.create_certificate, ch, wire.csr_with_version(1))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid CSR version" in err.details()


@pytest.mark.parametrize("method", [CREATE, STREAM])
def test_malformed_protobuf_is_invalid_argument_with_or_without_a_certificate(
    cp: ControlPlane, node1: wire.Credential, method: str
) -> None:
    for credential in (None, node1):
        with wire.channel(cp.address, cp.bundle_pem(), credential) as ch:
            for data in GARBAGE:
                assert raw_call(ch, method, data) == grpc.StatusCode.INVALID_ARGUMENT, data


def test_refusals_are_logged_once_per_source_per_interval(tmp_path: Path) -> None:
    with run_control_plane(tmp_path, REGISTRY) as cp:
        started = time.monotonic()
        with wire.channel(cp.address, cp.bundle_pem()) as ch:
            for _ in range(100):
                assert raw_call(ch, CREATE, b"\xff\xff\xff") == grpc.StatusCode.INVALID_ARGUMENT
        elapsed = time.monotonic() - started
        # The answer to the last call has come back, and the line for its window is written first.
        log = cp.log()
    refusals = [line for line in log.splitlines() if "refused, INVALID_ARGUMENT" in line]
    assert "Traceback" not in log
    assert 1 <= len(refusals) <= 1 + int(elapsed // 10), refusals  # 10 s: the CA's interval
    assert "from 127.0.0.1 refused, INVALID_ARGUMENT" in refusals[0]
    assert "is not a valid message" in refusals[0]


def _mutated(pem: str, data: st.DataObject) -> str:
    """A valid CSR with one of the edits a fuzzer makes: a flipped base64 character, a cut, junk."""
    how = data.draw(st.sampled_from(["flip", "cut", "junk", "version", "as-is"]))
    if how == "version":
        return wire.csr_with_version(1)
    if how == "as-is":
        return pem
    lines = pem.splitlines(keepends=True)
    body = "".join(lines[1:-1])
    at = data.draw(st.integers(0, max(len(body) - 1, 0)))
    if how == "flip":
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
        body = body[:at] + data.draw(st.sampled_from(alphabet)) + body[at + 1 :]
    elif how == "cut":
        body = body[:at]
    else:
        body = body[:at] + data.draw(st.text(max_size=20)) + body[at:]
    return lines[0] + body + lines[-1]


def _requests(data: st.DataObject, pem: str) -> istio_ca_pb2.IstioCertificateRequest | bytes:
    kind = data.draw(st.sampled_from(["bytes", "csr", "metadata"]))
    if kind == "bytes":
        return data.draw(st.binary(max_size=64))
    meta = struct_pb2.Struct()
    if kind == "metadata":
        value = data.draw(
            st.one_of(
                st.just(REVIEWS),
                st.text(max_size=40),
                st.integers(-(2**53), 2**53),
                st.booleans(),
                st.lists(st.text(max_size=5), max_size=3),
            )
        )
        meta.update({"ImpersonatedIdentity": value})
    return istio_ca_pb2.IstioCertificateRequest(
        csr=_mutated(pem, data) if data.draw(st.booleans()) else data.draw(st.text(max_size=80)),
        validity_duration=data.draw(st.integers(-(2**63), 2**63 - 1)),
        metadata=meta,
    )


def test_fuzzed_requests_never_get_internal_or_unknown(
    cp: ControlPlane, node1: wire.Credential
) -> None:
    pem = wire.make_csr()
    codes: dict[grpc.StatusCode, int] = {}
    with (
        wire.channel(cp.address, cp.bundle_pem(), node1) as mtls,
        wire.channel(cp.address, cp.bundle_pem()) as anonymous,
    ):

        @settings(
            max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck), database=None
        )
        @given(st.data())
        def one_request(data: st.DataObject) -> None:
            request = _requests(data, pem)
            raw = request if isinstance(request, bytes) else request.SerializeToString()
            ch = mtls if data.draw(st.booleans()) else anonymous
            code = raw_call(ch, data.draw(st.sampled_from([CREATE, CREATE, STREAM])), raw)
            codes[code] = codes.get(code, 0) + 1
            assert code in ACCEPTABLE, (code, request)

        one_request()
    assert codes.get(grpc.StatusCode.INVALID_ARGUMENT, 0) > 100  # the fuzzer reached the checks
    log = cp.log()
    assert "Traceback" not in log
    assert not re.search(r"INTERNAL|UNKNOWN", log)
    # And the CA still issues.
    renewed = wire.issue(cp.address, cp.bundle_pem(), node1, impersonate=REVIEWS)
    assert renewed.chain[0].public_key() == renewed.key.public_key()
