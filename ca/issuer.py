"""The signing core: CSR in, X.509-SVID chain out. Pure: the identity, TTL and `now` are inputs.

Only the CSR's public key (and its proof of possession) is used. Its subject and SANs are ignored:
the identity in the certificate is the one the caller is entitled to, decided before this runs.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID

from ca.leaf_der import LeafDer, spki_der
from meshward_common.errors import InvalidRequest
from meshward_common.spiffe_id import SpiffeId
from meshward_common.svid import key_problem

# A P-256 CSR is ~500 bytes and an RSA-4096 one ~1.7 kB in PEM; anything far larger is abuse.
MAX_CSR_BYTES = 8 * 1024
# Clocks on nodes drift: a leaf is valid from a little before it was issued.
BACKDATE = dt.timedelta(seconds=60)


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
    # Per-authority constants of every signature, computed once: reading them off the
    # certificate (and re-encoding the fixed extensions) per CSR costs more than the signing.
    leaf_template: _LeafTemplate = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        chain = [self.cert, *self.parents]
        if not self.parents and self.cert not in self.roots:
            raise ValueError("a self-signed signing certificate must be in the roots")
        pems = tuple(c.public_bytes(serialization.Encoding.PEM).decode() for c in chain)
        object.__setattr__(self, "served_chain_pem", pems)
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(self.cert.public_key())  # type: ignore[arg-type]
        object.__setattr__(self, "authority_key_id", aki)
        object.__setattr__(self, "leaf_template", _LeafTemplate.of(self, aki))

    @property
    def served_chain(self) -> tuple[x509.Certificate, ...]:
        """What follows the leaf in an issued chain: signing certificate up to the root."""
        return (self.cert, *self.parents)


def parse_csr(pem: str | bytes) -> x509.CertificateSigningRequest:
    """Parse a PEM PKCS#10 request and check its signature and key; InvalidRequest says why not."""
    return _load_checked_csr(pem)[0]


def csr_public_key(pem: str | bytes) -> CertificatePublicKeyTypes:
    """`parse_csr`, returning the checked public key (what signing needs), extracted once."""
    return _load_checked_csr(pem)[1]


def _load_checked_csr(
    pem: str | bytes,
) -> tuple[x509.CertificateSigningRequest, CertificatePublicKeyTypes]:
    data = pem.encode() if isinstance(pem, str) else pem
    if not data.strip():
        raise InvalidRequest("CSR is empty")
    if len(data) > MAX_CSR_BYTES:
        raise InvalidRequest(f"CSR is {len(data)} bytes; the limit is {MAX_CSR_BYTES}")
    if b"-----BEGIN CERTIFICATE REQUEST-----" not in data:
        raise InvalidRequest("CSR is not PEM (no 'BEGIN CERTIFICATE REQUEST' block)")
    try:
        csr = x509.load_pem_x509_csr(data)
    except (ValueError, x509.InvalidVersion) as exc:  # a version other than 0 is InvalidVersion
        raise InvalidRequest(f"CSR is not a valid PKCS#10 request: {exc}") from exc
    try:
        key = csr.public_key()
        valid = _signature_valid(csr, key)
    except Exception as exc:  # unsupported algorithms surface as various library errors
        raise InvalidRequest(f"CSR signature or key cannot be read: {exc}") from exc
    if not valid:
        raise InvalidRequest("CSR signature does not verify against its public key")
    check_public_key(key)
    return csr, key


def _signature_valid(csr: x509.CertificateSigningRequest, key: CertificatePublicKeyTypes) -> bool:
    """`csr.is_signature_valid`, with the key already decoded: that property decodes it again,
    a sixth of an ECDSA CSR's check."""
    params = csr.signature_algorithm_parameters
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(params, ec.ECDSA):
        try:
            key.verify(csr.signature, csr.tbs_certrequest_bytes, params)
        except InvalidSignature:
            return False
        return True
    return csr.is_signature_valid


def check_public_key(key: CertificatePublicKeyTypes) -> None:
    """The SVID key rule (`meshward_common.svid.key_problem`), as a refusal of the request."""
    problem = key_problem(key)
    if problem:
        raise InvalidRequest(f"CSR key: {problem}")


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


# The fixed parts of every leaf, built once.
_LEAF_BASIC_CONSTRAINTS = x509.BasicConstraints(ca=False, path_length=None)
_EC_KEY_USAGE = _key_usage(key_encipherment=False)
_RSA_KEY_USAGE = _key_usage(key_encipherment=True)  # RSA key transport in TLS 1.2
_LEAF_EKU = x509.ExtendedKeyUsage(
    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
)


@dataclass(frozen=True)
class _LeafTemplate:
    """What every leaf of one authority shares: its bounds, its chain, its encoded parts."""

    not_before: dt.datetime  # the signer's validity, aware UTC
    not_after: dt.datetime
    served_chain: tuple[x509.Certificate, ...]
    der: LeafDer

    @classmethod
    def of(cls, authority: SigningAuthority, aki: x509.AuthorityKeyIdentifier) -> _LeafTemplate:
        # Leading extensions (basic constraints, key usage, EKU); the subject alternative name
        # follows, then the authority key identifier.
        def head(usage: x509.KeyUsage) -> list[tuple[x509.ExtensionType, bool]]:
            return [(_LEAF_BASIC_CONSTRAINTS, True), (usage, True), (_LEAF_EKU, False)]

        return cls(
            not_before=authority.cert.not_valid_before_utc,
            not_after=authority.cert.not_valid_after_utc,
            served_chain=authority.served_chain,
            der=LeafDer.of(
                authority.key,
                authority.cert.subject,
                head(_EC_KEY_USAGE),
                head(_RSA_KEY_USAGE),
                aki,
            ),
        )


@dataclass(frozen=True)
class SignedLeaf:
    """An issued leaf as the wire needs it: DER, and what the audit log records."""

    der: bytes
    serial: int
    not_after: dt.datetime

    def pem(self) -> str:
        body = base64.b64encode(self.der).decode()
        lines = "\n".join(body[i : i + 64] for i in range(0, len(body), 64))
        return f"-----BEGIN CERTIFICATE-----\n{lines}\n-----END CERTIFICATE-----\n"


def sign_leaf(
    authority: SigningAuthority,
    public_key: CertificatePublicKeyTypes,
    identity: SpiffeId,
    ttl: dt.timedelta,
    now: dt.datetime,
    dns_names: Sequence[str] = (),
) -> SignedLeaf:
    """Sign an X.509-SVID leaf for `identity` (the CA's per-request path: no parsing back)."""
    check_public_key(public_key)
    if not identity.path:
        raise InvalidRequest(f"{identity} has no path; an SVID needs a workload path")
    tpl = authority.leaf_template
    if now >= tpl.not_after:
        raise InvalidRequest("the CA's signing certificate has expired")
    # Whole seconds, as X.509 times are (the signer's own bounds are whole seconds already).
    now = now.replace(microsecond=0)
    not_before = max(now - BACKDATE, tpl.not_before)
    # An SVID never outlives the certificate that signed it.
    not_after = min(now + ttl, tpl.not_after)
    serial = x509.random_serial_number()
    tbs = tpl.der.tbs(
        spki_der(public_key),
        isinstance(public_key, rsa.RSAPublicKey),
        str(identity),
        dns_names,
        serial,
        not_before,
        not_after,
    )
    return SignedLeaf(tpl.der.sign(tbs), serial, not_after)


def issue_svid(
    authority: SigningAuthority,
    public_key: CertificatePublicKeyTypes,
    identity: SpiffeId,
    ttl: dt.timedelta,
    now: dt.datetime,
    dns_names: Sequence[str] = (),
) -> list[x509.Certificate]:
    """Sign an X.509-SVID for `identity`; returns the chain leaf first, root last."""
    leaf = sign_leaf(authority, public_key, identity, ttl, now, dns_names)
    return [x509.load_der_x509_certificate(leaf.der), *authority.leaf_template.served_chain]
