"""The signing core: CSR in, X.509-SVID chain out. Pure: the identity, TTL and `now` are inputs.

Only the CSR's public key (and its proof of possession) is used. Its subject and SANs are ignored:
the identity in the certificate is the one the caller is entitled to, decided before this runs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID

from meshward_common.errors import InvalidRequest
from meshward_common.spiffe_id import SpiffeId

# A P-256 CSR is ~500 bytes and an RSA-4096 one ~1.7 kB in PEM; anything far larger is abuse.
MAX_CSR_BYTES = 8 * 1024
# Clocks on nodes drift: a leaf is valid from a little before it was issued.
BACKDATE = dt.timedelta(seconds=60)
_ALLOWED_CURVES = ("secp256r1", "secp384r1")
MIN_RSA_BITS = 2048


@dataclass(frozen=True)
class SigningAuthority:
    """What the CA signs with: its signing certificate and key, and the path up to the trust bundle."""

    cert: x509.Certificate
    key: CertificateIssuerPrivateKeyTypes
    # Certificates above `cert`, root last; empty when `cert` is itself the (self-signed) root.
    parents: tuple[x509.Certificate, ...]
    # Every root a peer should trust (a bundle may hold an old and a new root during rotation).
    roots: tuple[x509.Certificate, ...]
    served_chain_pem: tuple[str, ...] = field(init=False)
    # Computed once: every leaf this authority signs carries the same key identifier.
    authority_key_id: x509.AuthorityKeyIdentifier = field(init=False)

    def __post_init__(self) -> None:
        chain = [self.cert, *self.parents]
        if not self.parents and self.cert not in self.roots:
            raise ValueError("a self-signed signing certificate must be in the roots")
        pems = tuple(c.public_bytes(serialization.Encoding.PEM).decode() for c in chain)
        object.__setattr__(self, "served_chain_pem", pems)
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(self.cert.public_key())  # type: ignore[arg-type]
        object.__setattr__(self, "authority_key_id", aki)

    @property
    def served_chain(self) -> tuple[x509.Certificate, ...]:
        """What follows the leaf in an issued chain: signing certificate up to the root."""
        return (self.cert, *self.parents)


def parse_csr(pem: str | bytes) -> x509.CertificateSigningRequest:
    """Parse a PEM PKCS#10 request and check its signature and key; InvalidRequest says why not."""
    data = pem.encode() if isinstance(pem, str) else pem
    if not data.strip():
        raise InvalidRequest("CSR is empty")
    if len(data) > MAX_CSR_BYTES:
        raise InvalidRequest(f"CSR is {len(data)} bytes; the limit is {MAX_CSR_BYTES}")
    if b"-----BEGIN CERTIFICATE REQUEST-----" not in data:
        raise InvalidRequest("CSR is not PEM (no 'BEGIN CERTIFICATE REQUEST' block)")
    try:
        csr = x509.load_pem_x509_csr(data)
    except ValueError as exc:
        raise InvalidRequest(f"CSR is not a valid PKCS#10 request: {exc}") from exc
    try:
        valid = csr.is_signature_valid
    except Exception as exc:  # unsupported algorithms surface as various library errors
        raise InvalidRequest(f"CSR signature cannot be checked: {exc}") from exc
    if not valid:
        raise InvalidRequest("CSR signature does not verify against its public key")
    check_public_key(csr.public_key())
    return csr


def check_public_key(key: CertificatePublicKeyTypes) -> None:
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in _ALLOWED_CURVES:
            raise InvalidRequest(f"CSR key is EC on {key.curve.name}; P-256 or P-384 required")
        return
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise InvalidRequest(f"CSR key is RSA-{key.key_size}; at least RSA-{MIN_RSA_BITS}")
        return
    raise InvalidRequest(f"CSR key type {type(key).__name__} is not allowed; use EC P-256 or RSA")


def effective_ttl(
    requested_seconds: int, default: dt.timedelta, maximum: dt.timedelta
) -> dt.timedelta:
    """The TTL to issue: the CA's default for 0, else the request, which must not exceed the max."""
    if requested_seconds < 0:
        raise InvalidRequest(f"validity_duration {requested_seconds}s is negative")
    if requested_seconds == 0:
        return min(default, maximum)
    if requested_seconds > maximum.total_seconds():
        raise InvalidRequest(
            f"validity_duration {requested_seconds}s exceeds the maximum of "
            f"{int(maximum.total_seconds())}s"
        )
    return dt.timedelta(seconds=requested_seconds)


def _key_usage(*, key_encipherment: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


# The fixed parts of every leaf, built once (the builder copies them, never mutates).
_EMPTY_NAME = x509.Name([])
_LEAF_BASIC_CONSTRAINTS = x509.BasicConstraints(ca=False, path_length=None)
_EC_KEY_USAGE = _key_usage(key_encipherment=False)
_RSA_KEY_USAGE = _key_usage(key_encipherment=True)  # RSA key transport in TLS 1.2
_LEAF_EKU = x509.ExtendedKeyUsage(
    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
)


def _hash_for(key: CertificateIssuerPrivateKeyTypes) -> hashes.SHA256 | hashes.SHA384:
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384()
    return hashes.SHA256()


def issue_svid(
    authority: SigningAuthority,
    public_key: CertificatePublicKeyTypes,
    identity: SpiffeId,
    ttl: dt.timedelta,
    now: dt.datetime,
    dns_names: Sequence[str] = (),
) -> list[x509.Certificate]:
    """Sign an X.509-SVID for `identity`; returns the chain leaf first, root last."""
    check_public_key(public_key)
    if not identity.path:
        raise InvalidRequest(f"{identity} has no path; an SVID needs a workload path")
    signer_not_after = authority.cert.not_valid_after_utc
    if now >= signer_not_after:
        raise InvalidRequest("the CA's signing certificate has expired")
    not_before = max(now - BACKDATE, authority.cert.not_valid_before_utc)
    # An SVID never outlives the certificate that signed it.
    not_after = min(now + ttl, signer_not_after)
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(str(identity))]
    sans.extend(x509.DNSName(name) for name in dns_names)
    is_rsa = isinstance(public_key, rsa.RSAPublicKey)
    builder = (
        x509.CertificateBuilder()
        # Empty subject, as Istio issues: the identity lives in the (then critical) URI SAN.
        .subject_name(_EMPTY_NAME)
        .issuer_name(authority.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(_LEAF_BASIC_CONSTRAINTS, critical=True)
        .add_extension(_RSA_KEY_USAGE if is_rsa else _EC_KEY_USAGE, critical=True)
        .add_extension(_LEAF_EKU, critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=True)
        .add_extension(authority.authority_key_id, critical=False)
    )
    leaf = builder.sign(authority.key, _hash_for(authority.key))
    return [leaf, *authority.served_chain]
