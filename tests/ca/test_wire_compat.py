"""A client built from Istio's own ca.proto (compiled here, in a private descriptor pool so it
cannot collide with meshward's stubs) gets a valid chain from meshward's CA."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, struct_pb2
from grpc_tools import protoc

from meshward_common.svid import verify_x509_svid
from tests.ca import wire
from tests.harness.control_plane import ControlPlane, run_control_plane

PROTO_DIR = Path(__file__).parent / "istio_api"
METHOD = "/istio.v1.auth.IstioCertificateService/CreateCertificate"
REGISTRY = """workloads:
  - {name: reviews-v1, namespace: default, serviceAccount: reviews, node: node-1}
"""


def istio_messages(tmp_path: Path) -> tuple[type[Any], type[Any]]:
    out = tmp_path / "ca.pb"
    well_known = str(files("grpc_tools") / "_proto")
    rc = protoc.main(
        ["protoc", f"-I{PROTO_DIR}", f"-I{well_known}", "--include_imports",
         f"--descriptor_set_out={out}", "ca.proto"]
    )  # fmt: skip
    assert rc == 0
    fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for fd in fds.file:
        pool.Add(fd)
    req = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("istio.v1.auth.IstioCertificateRequest")
    )
    resp = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("istio.v1.auth.IstioCertificateResponse")
    )
    return req, resp


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with run_control_plane(tmp_path_factory.mktemp("cp"), REGISTRY) as plane:
        yield plane


def test_istio_proto_client_gets_a_valid_chain(cp: ControlPlane, tmp_path: Path) -> None:
    request_cls, response_cls = istio_messages(tmp_path)
    node = wire.bootstrap(cp.address, cp.bundle_pem(), cp.join_token("node-1"))
    key = wire.new_key()
    request = request_cls(csr=wire.make_csr(key), validity_duration=3600)
    # The private pool has its own Struct type: fill it from the wire bytes of a standard one.
    meta = struct_pb2.Struct()
    meta.update({"ImpersonatedIdentity": "spiffe://cluster.local/ns/default/sa/reviews"})
    request.metadata.ParseFromString(meta.SerializeToString())
    with wire.channel(cp.address, cp.bundle_pem(), node) as ch:
        call = ch.unary_unary(
            METHOD,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_cls.FromString,
        )
        response = call(request, timeout=10)
    chain = [x509.load_pem_x509_certificate(p.encode()) for p in response.cert_chain]
    roots = x509.load_pem_x509_certificates(cp.bundle_pem())
    sid = verify_x509_svid(chain, roots, dt.datetime.now(dt.UTC))
    assert str(sid) == "spiffe://cluster.local/ns/default/sa/reviews"
    assert chain[0].public_key() == key.public_key()
    assert chain[0].not_valid_after_utc - chain[0].not_valid_before_utc == dt.timedelta(
        seconds=3660
    )


def test_istio_proto_error_codes_travel_unchanged(cp: ControlPlane, tmp_path: Path) -> None:
    request_cls, response_cls = istio_messages(tmp_path)
    with wire.channel(cp.address, cp.bundle_pem()) as ch:
        call = ch.unary_unary(
            METHOD,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_cls.FromString,
        )
        with pytest.raises(grpc.RpcError) as info:
            call(request_cls(csr=wire.make_csr()), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
