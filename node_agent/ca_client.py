"""The agent's side of the control plane's wire API (Istio's CreateCertificate, MeshDiscovery).

Secure naming: grpcio's client checks the server certificate against the trust bundle and a DNS
name only; it cannot be asked for the SPIFFE ID. Before each channel is (re)built we therefore
make one TLS handshake of our own to the same address, verify the chain against the bundle and
require the leaf's URI SAN to be `spiffe://<td>/meshward/control-plane`; the gRPC channel then
also verifies the DNS SAN `meshward-control-plane`, which the CA never puts into an SVID it issues.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf import struct_pb2

from meshward_common.addresses import parse_host_port
from meshward_common.errors import (
    MeshwardError,
    NotReady,
    SvidError,
    Unauthenticated,
)
from meshward_common.grpc_status import error_for
from meshward_common.limits import MESH_STATE_MESSAGE_LIMIT
from meshward_common.protos import istio_ca_pb2, istio_ca_pb2_grpc
from meshward_common.protos import meshward_discovery_pb2 as mdpb
from meshward_common.protos import meshward_discovery_pb2_grpc as mdpb_grpc
from meshward_common.spiffe_id import SpiffeId
from meshward_common.svid import load_pem_chain, pem_of, spiffe_id_of

CONTROL_PLANE_DNS = "meshward-control-plane"
_CONTROL_PLANE_PATH = "/meshward/control-plane"
_RPC_TIMEOUT = 10.0


@dataclass(frozen=True)
class ClientCredential:
    """The node's mTLS credential: key and chain (leaf first) as PEM."""

    key_pem: bytes
    chain_pem: bytes


def make_csr(key: ec.EllipticCurvePrivateKey, spiffe_id: SpiffeId | None) -> str:
    # The CA takes SANs from the caller's authorized identity, not the CSR; the URI SAN is only
    # a hint for humans reading the CSR.
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if spiffe_id is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(spiffe_id))]),
            critical=False,
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def _map_rpc_error(exc: grpc.aio.AioRpcError, what: str) -> MeshwardError:
    code = exc.code()
    name = code.name if code is not None else "no status"
    return error_for(code, f"{what}: CA answered {name}: {exc.details()}")


async def verify_control_plane(address: str, bundle_pem: bytes, wait: float = 5.0) -> SpiffeId:
    """Handshake with the CA, check its certificate names the control plane; return that ID."""
    host, port = parse_host_port(address, "CA address", port_zero=False)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # SPIFFE IDs are URI SANs; checked below
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=bundle_pem.decode())
    ctx.set_alpn_protocols(["h2"])
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=ctx), wait)
    except (OSError, TimeoutError, ValueError) as exc:
        raise NotReady(f"CA at {address} unreachable or TLS failed: {exc}") from exc
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    try:
        sid = spiffe_id_of(x509.load_der_x509_certificate(der))
    except SvidError as exc:
        raise Unauthenticated(f"CA at {address} has no SPIFFE identity: {exc}") from exc
    if sid.path != _CONTROL_PLANE_PATH:
        raise Unauthenticated(f"server at {address} is {sid}, not the control plane")
    return sid


def make_channel(
    address: str, bundle_pem: bytes, credential: ClientCredential | None
) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=bundle_pem,
        private_key=credential.key_pem if credential else None,
        certificate_chain=credential.chain_pem if credential else None,
    )
    return grpc.aio.secure_channel(
        address,
        creds,
        options=[
            ("grpc.ssl_target_name_override", CONTROL_PLANE_DNS),
            ("grpc.default_authority", CONTROL_PLANE_DNS),
            ("grpc.max_receive_message_length", MESH_STATE_MESSAGE_LIMIT),
        ],
    )


def _metadata_struct(impersonate: SpiffeId | None) -> struct_pb2.Struct:
    meta = struct_pb2.Struct()
    if impersonate is not None:
        meta.update({"ImpersonatedIdentity": str(impersonate)})
    return meta


async def create_certificate(
    channel: grpc.aio.Channel,
    csr_pem: str,
    ttl: dt.timedelta | None,
    *,
    join_token: str | None = None,
    impersonate: SpiffeId | None = None,
) -> list[x509.Certificate]:
    """Call CreateCertificate; return the chain, leaf first, root last."""
    stub = istio_ca_pb2_grpc.IstioCertificateServiceStub(channel)  # type: ignore[no-untyped-call]
    request = istio_ca_pb2.IstioCertificateRequest(
        csr=csr_pem,
        validity_duration=int(ttl.total_seconds()) if ttl else 0,
        metadata=_metadata_struct(impersonate),
    )
    metadata = (("authorization", f"Bearer {join_token}"),) if join_token else None
    what = f"certificate for {impersonate}" if impersonate else "node certificate"
    try:
        response = await stub.CreateCertificate(request, metadata=metadata, timeout=_RPC_TIMEOUT)
    except grpc.aio.AioRpcError as exc:
        raise _map_rpc_error(exc, what) from exc
    except asyncio.CancelledError:
        _reraise_if_cancelling()
        raise NotReady(f"{what}: channel closed during the call") from None
    if not response.cert_chain:
        raise NotReady(f"{what}: CA returned an empty chain")
    try:
        return load_pem_chain("".join(response.cert_chain).encode())
    except (SvidError, ValueError) as exc:
        raise NotReady(f"{what}: CA returned an unreadable chain: {exc}") from exc


async def stream_mesh_state(
    channel: grpc.aio.Channel, version: str
) -> AsyncIterator[mdpb.MeshState]:
    stub = mdpb_grpc.MeshDiscoveryStub(channel)  # type: ignore[no-untyped-call]
    call = stub.StreamMeshState(mdpb.MeshStateRequest(version_info=version))
    try:
        async for state in call:
            yield state
    except grpc.aio.AioRpcError as exc:
        raise _map_rpc_error(exc, "mesh state stream") from exc
    except asyncio.CancelledError:
        _reraise_if_cancelling()
        raise NotReady("mesh state stream: channel closed") from None
    finally:
        call.cancel()


def _reraise_if_cancelling() -> None:
    """grpc.aio reports its channel closing under a call as CancelledError: tell it apart from
    our own task being cancelled, which must propagate."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def split_root(
    chain: Sequence[x509.Certificate],
) -> tuple[list[x509.Certificate], list[x509.Certificate]]:
    """(chain without self-issued roots, the roots) of a CA response."""
    body = [c for c in chain if c.issuer != c.subject]
    roots = [c for c in chain if c.issuer == c.subject]
    return body, roots


__all__ = [
    "ClientCredential",
    "create_certificate",
    "make_channel",
    "make_csr",
    "pem_of",
    "split_root",
    "stream_mesh_state",
    "verify_control_plane",
]
