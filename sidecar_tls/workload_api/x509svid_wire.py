"""The SPIFFE Workload API's `X509SVIDResponse`, decoded from its protobuf wire bytes.

The classes are generated from protos/spiffe_workload_wire.proto (our copy of the X.509 messages
under our own package): the `spiffe` package's `workload_pb2` can only be imported through
`spiffe/__init__.py`, which loads grpc, pyasn1 and the rest (~20 MB RSS per sidecar).
Certificates are concatenated DER (ASN.1 SEQUENCEs back to back); the key is PKCS#8 DER.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from meshward_common.errors import SvidError
from meshward_common.protos import spiffe_workload_wire_pb2 as wire

# Re-exported: the decoder's callers split bundles with it.
from meshward_common.svid import split_der_certificates as split_der_certificates

X509SVID_REQUEST = wire.X509SVIDRequest().SerializeToString()


@dataclass(frozen=True)
class X509SvidMessage:
    spiffe_id: str
    x509_svid: bytes  # DER chain, leaf first
    x509_svid_key: bytes = field(repr=False)  # PKCS#8 DER: never logged
    bundle: bytes  # DER roots of the SVID's own trust domain
    hint: str = ""


@dataclass(frozen=True)
class X509SvidResponse:
    svids: tuple[X509SvidMessage, ...]
    crl: tuple[bytes, ...] = ()
    federated_bundles: dict[str, bytes] = field(default_factory=dict)


def decode_x509svid_response(data: bytes) -> X509SvidResponse:
    """Parse one `X509SVIDResponse`; `SvidError` with one line naming the problem if malformed."""
    try:
        msg = wire.X509SVIDResponse.FromString(data)
    except DecodeError as exc:
        raise SvidError([f"malformed X509SVIDResponse from the Workload API: {exc}"]) from exc
    svids = tuple(
        X509SvidMessage(s.spiffe_id, s.x509_svid, s.x509_svid_key, s.bundle, s.hint)
        for s in msg.svids
    )
    return X509SvidResponse(svids, tuple(msg.crl), dict(msg.federated_bundles))
