"""The leaf's hand-assembled DER is byte for byte what cryptography's CertificateBuilder encodes
for the same values: the same certificate, whatever the signer's or the subject's key, the
validity (UTCTime and GeneralizedTime), the serial (with and without a leading zero byte) and the
SANs."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID

from ca.authority import make_root
from ca.issuer import SigningAuthority, sign_leaf
from ca.leaf_der import der_integer, der_oid, spki_der
from meshward_common.spiffe_id import SpiffeId
from tests.ca.conftest import NOW, TD

KEYS: dict[str, Callable[[], CertificateIssuerPrivateKeyTypes]] = {
    "P-256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "P-384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "RSA-2048": lambda: rsa.generate_private_key(65537, 2048),
}


def _builder_tbs(
    authority: SigningAuthority,
    subject_key: CertificateIssuerPrivateKeyTypes,
    uri: str,
    dns: tuple[str, ...],
    serial: int,
    not_before: dt.datetime,
    not_after: dt.datetime,
) -> bytes:
    usage = x509.KeyUsage(
        digital_signature=True, content_commitment=False,
        key_encipherment=isinstance(subject_key, rsa.RSAPrivateKey), data_encipherment=False,
        key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False,
        decipher_only=False,
    )  # fmt: skip
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)]
    sans += [x509.DNSName(d) for d in dns]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(authority.cert.subject)
        .public_key(subject_key.public_key())
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(authority.key, _hash_for(authority.key))
    )
    return cert.tbs_certificate_bytes


def _hash_for(key: CertificateIssuerPrivateKeyTypes) -> hashes.HashAlgorithm:
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384()
    return hashes.SHA256()


def _authority(kind: str) -> SigningAuthority:
    if kind == "P-256":
        cert, key = make_root(TD, NOW)
        return SigningAuthority(cert, key, (), (cert,))
    key = KEYS[kind]()
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, f"{kind} root")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=9000))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    return SigningAuthority(cert, key, (), (cert,))


@pytest.mark.parametrize("signer", list(KEYS))
@pytest.mark.parametrize("subject", list(KEYS))
def test_tbs_matches_the_builder(signer: str, subject: str) -> None:
    authority = _authority(signer)
    key = KEYS[subject]()
    tpl = authority.leaf_template.der
    uri = f"spiffe://{TD}/ns/default/sa/reviews"
    for serial, dns, (nb, na) in (
        (1, (), (NOW, NOW + dt.timedelta(hours=1))),
        (0x80 << 150, ("localhost", "meshward-control-plane"), (NOW, NOW + dt.timedelta(days=1))),
        (x509.random_serial_number(), (), (NOW, dt.datetime(2051, 1, 2, 3, 4, 5, tzinfo=dt.UTC))),
    ):
        ours = tpl.tbs(
            spki_der(key.public_key()), isinstance(key, rsa.RSAPrivateKey), uri, dns, serial, nb, na
        )
        assert ours == _builder_tbs(authority, key, uri, dns, serial, nb, na)


@pytest.mark.parametrize("signer", list(KEYS))
def test_signed_leaf_verifies_under_the_signer_and_reads_back(signer: str) -> None:
    authority = _authority(signer)
    key = ec.generate_private_key(ec.SECP256R1())
    identity = x509.UniformResourceIdentifier(f"spiffe://{TD}/ns/default/sa/reviews")
    sid = SpiffeId.parse(identity.value)
    leaf = sign_leaf(authority, key.public_key(), sid, dt.timedelta(hours=1), NOW)
    cert = x509.load_der_x509_certificate(leaf.der)
    assert x509.load_pem_x509_certificate(leaf.pem().encode()) == cert
    cert.verify_directly_issued_by(authority.cert)
    assert cert.serial_number == leaf.serial
    assert cert.not_valid_after_utc == leaf.not_after == NOW + dt.timedelta(hours=1)
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value == (
        x509.SubjectAlternativeName([identity])
    )


def test_primitive_encodings() -> None:
    assert der_integer(0) == b"\x02\x01\x00"
    assert der_integer(127) == b"\x02\x01\x7f"
    assert der_integer(128) == b"\x02\x02\x00\x80"
    assert der_integer(256) == b"\x02\x02\x01\x00"
    assert der_oid("2.5.29.17") == b"\x06\x03\x55\x1d\x11"
    assert der_oid("1.2.840.10045.4.3.2") == bytes.fromhex("06082a8648ce3d040302")
