"""A small test client for the CA over the wire: CSRs, CreateCertificate, the discovery stream."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID
from google.protobuf import struct_pb2

from meshward_common.limits import MESH_STATE_MESSAGE_LIMIT
from meshward_common.protos import istio_ca_pb2, istio_ca_pb2_grpc
from meshward_common.protos import meshward_discovery_pb2 as discovery_pb2
from meshward_common.protos import meshward_discovery_pb2_grpc as discovery_pb2_grpc

SERVER_NAME = "meshward-control-plane"


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_csr(
    key: CertificateIssuerPrivateKeyTypes | None = None,
    uri: str | None = "spiffe://evil.example/ns/x/sa/admin",
) -> str:
    """A PEM CSR; by default it asks for an identity it must NOT get (SANs are never trusted)."""
    key = key or new_key()
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "whatever")])
    )
    if uri:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def csr_with_version(version: int) -> str:
    """A valid CSR whose version field says `version` (PKCS#10 knows only 0); its signature no
    longer verifies, but a parser must refuse the version first."""
    der = bytearray(
        x509.load_pem_x509_csr(make_csr().encode()).public_bytes(serialization.Encoding.DER)
    )
    at = der.find(b"\x02\x01\x00")  # the first INTEGER: CertificationRequestInfo.version
    der[at + 2] = version
    body = base64.encodebytes(bytes(der)).decode()
    return f"-----BEGIN CERTIFICATE REQUEST-----\n{body}-----END CERTIFICATE REQUEST-----\n"


def key_pem(key: CertificateIssuerPrivateKeyTypes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass
class Credential:
    key: CertificateIssuerPrivateKeyTypes
    chain_pem: list[str]

    @property
    def chain(self) -> list[x509.Certificate]:
        return [x509.load_pem_x509_certificate(p.encode()) for p in self.chain_pem]


def channel(address: str, bundle: bytes, credential: Credential | None = None) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=bundle,
        private_key=key_pem(credential.key) if credential else None,
        # The client presents its leaf and intermediates (not the root).
        certificate_chain="".join(credential.chain_pem[:-1]).encode() if credential else None,
    )
    return grpc.secure_channel(
        address,
        creds,
        options=[
            ("grpc.ssl_target_name_override", SERVER_NAME),
            ("grpc.max_receive_message_length", MESH_STATE_MESSAGE_LIMIT),  # as node agents
        ],
    )


def create_certificate(
    ch: grpc.Channel,
    csr: str,
    *,
    ttl_seconds: int = 0,
    impersonate: str | None = None,
    token: str | None = None,
    timeout: float = 10.0,
) -> list[str]:
    meta = struct_pb2.Struct()
    if impersonate is not None:
        meta.update({"ImpersonatedIdentity": impersonate})
    stub = istio_ca_pb2_grpc.IstioCertificateServiceStub(ch)
    request = istio_ca_pb2.IstioCertificateRequest(
        csr=csr, validity_duration=ttl_seconds, metadata=meta
    )
    md = (("authorization", f"Bearer {token}"),) if token else None
    return list(stub.CreateCertificate(request, metadata=md, timeout=timeout).cert_chain)


def bootstrap(address: str, bundle: bytes, token: str, ttl_seconds: int = 0) -> Credential:
    key = new_key()
    with channel(address, bundle) as ch:
        chain = create_certificate(ch, make_csr(key), token=token, ttl_seconds=ttl_seconds)
    return Credential(key, chain)


def issue(
    address: str,
    bundle: bytes,
    credential: Credential,
    *,
    impersonate: str | None = None,
    key: CertificateIssuerPrivateKeyTypes | None = None,
    ttl_seconds: int = 0,
) -> Credential:
    key = key or new_key()
    with channel(address, bundle, credential) as ch:
        chain = create_certificate(
            ch, make_csr(key), impersonate=impersonate, ttl_seconds=ttl_seconds
        )
    return Credential(key, chain)


def rpc_error(fn, *args, **kwargs) -> grpc.RpcError:
    try:
        fn(*args, **kwargs)
    except grpc.RpcError as exc:
        return exc
    raise AssertionError("the call succeeded but should have been refused")


def stream_states(ch: grpc.Channel, version: str = "") -> Iterator[discovery_pb2.MeshState]:
    stub = discovery_pb2_grpc.MeshDiscoveryStub(ch)
    yield from stub.StreamMeshState(discovery_pb2.MeshStateRequest(version_info=version))


def rsa_key(bits: int) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
