"""Certificate builders for tests: CA certificates and X.509-SVID leaves made directly with
`cryptography`, independent of the CA under test (so tests can also make the broken ones the CA
would refuse to issue: expired, foreign, wrong identity)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_KEY_USAGE = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
# digitalSignature + keyEncipherment, as Istio's and SPIRE's leaves carry
LEAF_KEY_USAGE = x509.KeyUsage(True, False, True, False, False, False, False, False, False)


def ca_cert(
    key: ec.EllipticCurvePrivateKey,
    name: str,
    trust_domain: str,
    not_before: dt.datetime,
    not_after: dt.datetime,
    *,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
) -> x509.Certificate:
    """A root (self-signed) or, with `issuer`, an intermediate CA certificate for `key`."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(CA_KEY_USAGE, critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()),
            critical=False,
        )
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


def svid_leaf(
    issuer: x509.Certificate,
    issuer_key: ec.EllipticCurvePrivateKey,
    public_key: ec.EllipticCurvePublicKey,
    uris: Sequence[str],
    not_before: dt.datetime,
    not_after: dt.datetime,
    *,
    dns: Sequence[str] = (),
    subject: x509.Name | None = None,
) -> x509.Certificate:
    """An X.509-SVID leaf (or, with several or no `uris`, a deliberately non-conformant one)."""
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    sans += [x509.DNSName(d) for d in dns]
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject or x509.Name([]))
        .issuer_name(issuer.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(LEAF_KEY_USAGE, critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())
