"""The mTLS port (`--mtls-listen`) on its native transport (`ca.native_port`), over real sockets:
`meshward ca serve --workers 2` in a subprocess, grpcio clients with real TLS. It serves the
same servicers as 15012 through the same boundary: what is refused there is refused here with
the same status, and a connection without a certificate of this trust domain never gets a call
in."""

from __future__ import annotations

import socket
import ssl
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from meshward_common.protos import meshward_discovery_pb2 as discovery_pb2
from meshward_common.protos import meshward_discovery_pb2_grpc as discovery_pb2_grpc
from tests.ca import wire
from tests.ca.test_server import (
    NODE1,
    RATINGS,
    REGISTRY,
    REVIEWS,
    TD,
    audit_lines,
    check_chain,
    foreign_domain_credential,
    forged_credential,
)
from tests.harness.control_plane import ControlPlane, free_port, run_control_plane

Code = grpc.StatusCode
CREATE = "/istio.v1.auth.IstioCertificateService/CreateCertificate"


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    port = free_port()
    with run_control_plane(
        tmp_path_factory.mktemp("cp"),
        REGISTRY,
        max_ttl="48h",
        extra_args=("--workers", "2", "--mtls-listen", f"127.0.0.1:{port}"),
    ) as plane:
        plane.mtls_address = f"127.0.0.1:{port}"  # type: ignore[attr-defined]
        yield plane


def mtls(cp: ControlPlane) -> str:
    return str(cp.mtls_address)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def node1(cp: ControlPlane) -> wire.Credential:
    return wire.bootstrap(cp.address, cp.bundle_pem(), cp.join_token("node-1"))


def refused(
    cp: ControlPlane, credential: wire.Credential | None, **kwargs: object
) -> grpc.RpcError:
    csr = kwargs.pop("csr", None) or wire.make_csr()
    with wire.channel(mtls(cp), cp.bundle_pem(), credential) as ch:
        return wire.rpc_error(wire.create_certificate, ch, csr, **kwargs)


def test_a_node_renews_and_gets_its_workloads_svids(
    cp: ControlPlane, node1: wire.Credential
) -> None:
    renewed = wire.issue(mtls(cp), cp.bundle_pem(), node1)
    chain = check_chain(cp, renewed.chain_pem, NODE1)
    assert chain[0].public_key() == renewed.key.public_key()
    workload = wire.issue(mtls(cp), cp.bundle_pem(), renewed, impersonate=REVIEWS)
    check_chain(cp, workload.chain_pem, REVIEWS)
    line = audit_lines(cp)[-1]
    assert (line["outcome"], line["caller"], line["identity"]) == (
        "issued",
        "node/node-1 (mtls)",
        REVIEWS,
    )


def test_what_15012_refuses_is_refused_with_the_same_status(
    cp: ControlPlane, node1: wire.Credential
) -> None:
    other_node = refused(cp, node1, impersonate=RATINGS)
    assert other_node.code() == Code.PERMISSION_DENIED
    assert other_node.details() == (
        f"node/node-1 (mtls) may not obtain {RATINGS}: no workload of that identity is "
        "registered on its node node-1"
    )
    assert refused(cp, node1, csr="not a csr").code() == Code.INVALID_ARGUMENT
    too_long = refused(cp, node1, ttl_seconds=49 * 3600)
    assert too_long.code() == Code.INVALID_ARGUMENT
    assert "exceeds the maximum" in too_long.details()
    workload = wire.issue(mtls(cp), cp.bundle_pem(), node1, impersonate=REVIEWS)
    not_a_node = refused(cp, workload)
    assert not_a_node.code() == Code.PERMISSION_DENIED
    assert "not a node agent" in not_a_node.details()
    assert audit_lines(cp)[-1]["reason"].startswith("PERMISSION_DENIED")


def test_bad_bytes_are_answered_not_failed(cp: ControlPlane, node1: wire.Credential) -> None:
    with wire.channel(mtls(cp), cp.bundle_pem(), node1) as ch:
        raw = ch.unary_unary(CREATE)  # no serializers: these bytes go on the wire as they are
        garbage = wire.rpc_error(raw, b"\xff\xff\xff\xff", timeout=10)
        assert garbage.code() == Code.INVALID_ARGUMENT
        assert "not a valid message" in garbage.details()
        huge = wire.rpc_error(raw, b"\x0a" + b"\xff" * 200_000, timeout=10)
        assert huge.code() == Code.RESOURCE_EXHAUSTED
        unknown = wire.rpc_error(ch.unary_unary("/no.Such/Method"), b"", timeout=10)
        assert unknown.code() == Code.UNIMPLEMENTED
        # The connection that carried them still serves.
        chain = wire.create_certificate(ch, wire.make_csr())
    check_chain(cp, chain, NODE1)


def test_without_a_certificate_of_this_ca_the_handshake_fails(
    cp: ControlPlane, node1: wire.Credential, tmp_path: Path
) -> None:
    before = len(audit_lines(cp))
    for credential in (None, forged_credential()):
        err = refused(cp, credential)
        assert err.code() == Code.UNAVAILABLE, err.details()
    # Nor does a plain TLS client without one get an HTTP/2 connection.
    ctx = ssl.create_default_context(cadata=cp.bundle_pem().decode())
    ctx.check_hostname = False
    ctx.set_alpn_protocols(["h2"])
    host, port = mtls(cp).rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        assert _served_without_certificate(ctx, raw) is False
    assert len(audit_lines(cp)) == before, "nothing was issued or even considered"


def test_a_node_certificate_naming_another_trust_domain_is_refused(cp: ControlPlane) -> None:
    err = refused(cp, foreign_domain_credential(cp))
    assert err.code() == Code.UNAUTHENTICATED
    assert "no trust bundle for trust domain b.example" in err.details()


def test_the_discovery_stream_follows_changes_and_ends_with_its_caller(
    cp: ControlPlane, node1: wire.Credential
) -> None:
    with wire.channel(mtls(cp), cp.bundle_pem(), node1) as ch:
        stub = discovery_pb2_grpc.MeshDiscoveryStub(ch)
        stream = stub.StreamMeshState(discovery_pb2.MeshStateRequest(), timeout=30)
        first = next(stream)
        assert first.trust_domain == TD
        assert {w.name for w in first.workloads} == {"reviews-v1", "ratings-v1"}
        cp.write_registry(REGISTRY.replace("node: node-2", "node: node-1"))
        try:
            second = next(stream)
            assert {w.node for w in second.workloads} == {"node-1"}
            workload = wire.issue(mtls(cp), cp.bundle_pem(), node1, impersonate=RATINGS)
            check_chain(cp, workload.chain_pem, RATINGS)
        finally:
            cp.write_registry(REGISTRY)
        stream.cancel()
    workload = wire.issue(mtls(cp), cp.bundle_pem(), node1, impersonate=REVIEWS)
    with wire.channel(mtls(cp), cp.bundle_pem(), workload) as ch:
        err = wire.rpc_error(lambda: next(wire.stream_states(ch)))
    assert err.code() == Code.PERMISSION_DENIED


def test_every_worker_takes_connections_on_the_one_port(
    cp: ControlPlane, node1: wire.Credential
) -> None:
    channels = []
    try:
        deadline = time.monotonic() + 60
        port = int(mtls(cp).rsplit(":", 1)[1])
        while time.monotonic() < deadline:
            ch = wire.channel(mtls(cp), cp.bundle_pem(), node1)
            channels.append(ch)
            check_chain(cp, wire.create_certificate(ch, wire.make_csr()), NODE1)
            held = cp.connections_per_worker(port)
            if len(held) == 2 and all(held.values()):
                break
        held = cp.connections_per_worker(port)
        assert len(held) == 2, held
        assert all(held.values()), held
    finally:
        for ch in channels:
            ch.close()


def test_the_served_certificate_is_the_control_plane_svid(
    cp: ControlPlane, node1: wire.Credential
) -> None:
    ctx = ssl.create_default_context(cadata=cp.bundle_pem().decode())
    ctx.check_hostname = False
    ctx.load_cert_chain(*_cert_files(node1, cp.root))
    ctx.set_alpn_protocols(["h2"])
    host, port = mtls(cp).rsplit(":", 1)
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="meshward-control-plane") as tls,
    ):
        assert tls.version() in ("TLSv1.3", "TLSv1.2")
        assert tls.selected_alpn_protocol() == "h2"
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    leaf = x509.load_der_x509_certificate(der)
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
    assert uris == [f"spiffe://{TD}/meshward/control-plane"]


def _cert_files(credential: wire.Credential, directory: Path) -> tuple[str, str]:
    chain, key = directory / "node-chain.pem", directory / "node-key.pem"
    chain.write_text("".join(credential.chain_pem[:-1]))
    key.write_bytes(wire.key_pem(credential.key))
    key.chmod(0o600)
    return str(chain), str(key)


def _served_without_certificate(ctx: ssl.SSLContext, raw: socket.socket) -> bool:
    """Whether the port answers an HTTP/2 preface from a TLS client that sent no certificate
    (TLS 1.3 ends the handshake before the server checks it: the refusal comes as an alert)."""
    try:
        with ctx.wrap_socket(raw) as tls:
            tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            return tls.recv(1) != b""
    except (ssl.SSLError, OSError):
        return False


def _h2_call(cp: ControlPlane, node: wire.Credential, body: bytes) -> dict[str, str]:
    """One POST to CreateCertificate with `body` as its raw DATA, over TLS with the node's
    certificate, by the h2 library (which lets a test send framing grpcio never would); the
    response's headers and trailers together."""
    import h2.config
    import h2.connection
    import h2.events

    ctx = _node_tls(cp, node)
    host, port = mtls(cp).rsplit(":", 1)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    fields: dict[str, str] = {}
    with (
        socket.create_connection((host, int(port)), timeout=30) as raw,
        ctx.wrap_socket(raw, server_hostname="meshward-control-plane") as tls,
    ):
        conn.initiate_connection()
        headers = [
            (":method", "POST"), (":scheme", "https"), (":authority", "meshward-control-plane"),
            (":path", CREATE), ("content-type", "application/grpc"), ("te", "trailers"),
        ]  # fmt: skip
        conn.send_headers(1, headers)
        conn.send_data(1, body, end_stream=True)
        tls.sendall(conn.data_to_send())
        ended = False
        while not ended:
            data = tls.recv(65536)
            assert data, "the port closed the connection without answering"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    fields.update(
                        (
                            k.decode() if isinstance(k, bytes) else k,
                            v.decode() if isinstance(v, bytes) else v,
                        )
                        for k, v in event.headers
                    )
                ended = ended or isinstance(event, h2.events.StreamEnded)
            tls.sendall(conn.data_to_send())
    return fields


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "no complete gRPC message"),
        (b"\x00\x00\x00\x00\x10abc", "not exactly one length-prefixed"),
        (b"\x00\x00\x00\x00\x01ab", "not exactly one length-prefixed"),
        (b"\x01\x00\x00\x00\x01a", "compressed messages are not accepted"),
    ],
    ids=["empty", "truncated", "two-messages", "compressed"],
)
def test_bad_grpc_framing_is_invalid_argument(
    cp: ControlPlane, node1: wire.Credential, body: bytes, reason: str
) -> None:
    fields = _h2_call(cp, node1, body)
    assert fields[":status"] == "200"
    assert fields["grpc-status"] == str(Code.INVALID_ARGUMENT.value[0])
    assert reason in urllib.parse.unquote(fields["grpc-message"])  # percent-encoded on the wire


def _node_tls(cp: ControlPlane, node: wire.Credential) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=cp.bundle_pem().decode())
    ctx.check_hostname = False
    ctx.load_cert_chain(*_cert_files(node, cp.root))
    ctx.set_alpn_protocols(["h2"])
    return ctx


def test_connections_beyond_the_per_source_cap_are_closed(tmp_path: Path) -> None:
    port = free_port()
    args = ("--workers", "1", "--mtls-listen", f"127.0.0.1:{port}")
    args += ("--max-connections-per-source", "2", "--handshake-timeout", "60s")
    with run_control_plane(tmp_path, REGISTRY, extra_args=args) as plane:
        node = wire.bootstrap(plane.address, plane.bundle_pem(), plane.join_token("node-1"))
        first = socket.create_connection(("127.0.0.1", port), timeout=30)
        second = socket.create_connection(("127.0.0.1", port), timeout=30)
        with first, second:
            # Both hold their slots (no TLS yet); a third from the same address is closed at
            # once, long before the handshake deadline (recv would time out otherwise).
            with socket.create_connection(("127.0.0.1", port), timeout=30) as third:
                assert third.recv(1) == b""
            # The admitted ones were kept: the first completes its handshake now.
            with _node_tls(plane, node).wrap_socket(first) as tls:
                assert tls.selected_alpn_protocol() == "h2"


def test_a_handshake_that_never_starts_is_cut_at_the_deadline(tmp_path: Path) -> None:
    port = free_port()
    args = ("--workers", "1", "--mtls-listen", f"127.0.0.1:{port}", "--handshake-timeout", "1s")
    with (
        run_control_plane(tmp_path, REGISTRY, extra_args=args),
        socket.create_connection(("127.0.0.1", port), timeout=30) as idle,
    ):
        assert idle.recv(1) == b"", "a connection that never started TLS was kept"
