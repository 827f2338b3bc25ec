"""The signing core: CSR validation vectors, and every issued certificate against every SVID rule."""

from __future__ import annotations

import base64
import datetime as dt
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from ca.issuer import (
    BACKDATE,
    MAX_CSR_BYTES,
    SigningAuthority,
    csr_public_key,
    effective_ttl,
    issue_svid,
    parse_csr,
)
from meshward_common.errors import InvalidRequest
from meshward_common.spiffe_id import SpiffeId, node_id, workload_id
from meshward_common.svid import leaf_problems, signing_cert_problems, verify_x509_svid
from tests.ca import wire
from tests.ca.conftest import NOW, TD

WORKLOAD = workload_id(TD, "default", "reviews")


def csr_for(key: object, uris: tuple[str, ...] = (), dns: tuple[str, ...] = ()) -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "admin")])
    )
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    names += [x509.DNSName(d) for d in dns]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    csr = builder.sign(key, hashes.SHA256())  # type: ignore[arg-type]
    return csr.public_bytes(serialization.Encoding.PEM).decode()


KEYS = {
    "P-256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "P-384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "RSA-2048": lambda: rsa.generate_private_key(65537, 2048),
}


def check_every_rule(
    chain: list[x509.Certificate], authority: SigningAuthority, identity: SpiffeId
) -> None:
    leaf = chain[0]
    assert leaf_problems(leaf) == []
    for cert in chain[1:]:
        assert signing_cert_problems(cert) == []
    assert chain[-1] in authority.roots, "root last"
    assert verify_x509_svid(chain, authority.roots, NOW) == identity
    assert leaf.not_valid_after_utc <= authority.cert.not_valid_after_utc


def openssl_verify(
    tmp_path: Path, chain: list[x509.Certificate]
) -> subprocess.CompletedProcess[str]:
    pem = lambda certs: b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)  # noqa: E731
    (tmp_path / "root.pem").write_bytes(pem(chain[-1:]))
    (tmp_path / "untrusted.pem").write_bytes(pem(chain[1:-1]) or pem(chain[-1:]))
    (tmp_path / "leaf.pem").write_bytes(pem(chain[:1]))
    return subprocess.run(
        [
            "openssl",
            "verify",
            "-x509_strict",
            "-purpose",
            "sslclient",
            "-attime",
            str(int(NOW.timestamp())),
            "-CAfile",
            str(tmp_path / "root.pem"),
            "-untrusted",
            str(tmp_path / "untrusted.pem"),
            str(tmp_path / "leaf.pem"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize("key_type", list(KEYS))
@pytest.mark.parametrize("which", ["root", "intermediate"])
def test_issued_chain_keeps_every_rule_and_verifies_with_cryptography_and_openssl(
    request: pytest.FixtureRequest, tmp_path: Path, key_type: str, which: str
) -> None:
    authority: SigningAuthority = request.getfixturevalue(f"{which}_authority")
    key = KEYS[key_type]()
    csr = parse_csr(csr_for(key))
    chain = issue_svid(authority, csr.public_key(), WORKLOAD, dt.timedelta(hours=1), NOW)
    assert len(chain) == (2 if which == "root" else 3)
    check_every_rule(chain, authority, WORKLOAD)
    result = openssl_verify(tmp_path, chain)
    assert result.returncode == 0, result.stderr + result.stdout
    assert ": OK" in result.stdout


def test_csr_sans_are_never_trusted(root_authority: SigningAuthority) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = parse_csr(
        csr_for(
            key, uris=("spiffe://cluster.local/ns/kube-system/sa/admin",), dns=("evil.example",)
        )
    )
    chain = issue_svid(root_authority, csr.public_key(), WORKLOAD, dt.timedelta(hours=1), NOW)
    san = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [str(WORKLOAD)]
    assert san.get_values_for_type(x509.DNSName) == []
    assert chain[0].subject == x509.Name([])  # the CSR's CN=admin is dropped too
    assert chain[0].public_key() == key.public_key()


def test_validity_is_backdated_and_never_outlives_the_signer(
    intermediate_authority: SigningAuthority,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    leaf = issue_svid(intermediate_authority, key, WORKLOAD, dt.timedelta(hours=2), NOW)[0]
    assert leaf.not_valid_before_utc == NOW - BACKDATE
    assert leaf.not_valid_after_utc == NOW + dt.timedelta(hours=2)
    late = intermediate_authority.cert.not_valid_after_utc - dt.timedelta(minutes=5)
    clamped = issue_svid(intermediate_authority, key, WORKLOAD, dt.timedelta(hours=24), late)[0]
    assert clamped.not_valid_after_utc == intermediate_authority.cert.not_valid_after_utc
    with pytest.raises(InvalidRequest, match="expired"):
        issue_svid(
            intermediate_authority, key, WORKLOAD, dt.timedelta(hours=1),
            intermediate_authority.cert.not_valid_after_utc + dt.timedelta(seconds=1),
        )  # fmt: skip


def test_serials_are_unique_and_node_ids_are_issuable(root_authority: SigningAuthority) -> None:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    node = node_id(TD, "node-1")
    serials = {
        issue_svid(root_authority, key, node, dt.timedelta(hours=1), NOW)[0].serial_number
        for _ in range(20)
    }
    assert len(serials) == 20


def test_trust_domain_only_id_is_not_an_svid(root_authority: SigningAuthority) -> None:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(InvalidRequest, match="no path"):
        issue_svid(root_authority, key, SpiffeId(TD, ""), dt.timedelta(hours=1), NOW)


def _tampered_rsa_csr() -> str:
    der = x509.load_pem_x509_csr(
        csr_for(rsa.generate_private_key(65537, 2048)).encode()
    ).public_bytes(serialization.Encoding.DER)
    broken = der[:-1] + bytes([der[-1] ^ 0xFF])
    body = base64.encodebytes(broken).decode()
    return f"-----BEGIN CERTIFICATE REQUEST-----\n{body}-----END CERTIFICATE REQUEST-----\n"


def _tampered_ec_csr(curve: ec.EllipticCurve) -> str:
    """A well-formed ECDSA CSR whose subject was changed after signing."""
    der = x509.load_pem_x509_csr(csr_for(ec.generate_private_key(curve)).encode()).public_bytes(
        serialization.Encoding.DER
    )
    broken = der.replace(b"admin", b"admiN", 1)
    body = base64.encodebytes(broken).decode()
    return f"-----BEGIN CERTIFICATE REQUEST-----\n{body}-----END CERTIFICATE REQUEST-----\n"


def _ec_csr_signed_with(key: ec.EllipticCurvePrivateKey, hash_: hashes.HashAlgorithm) -> str:
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hash_)
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _ec_key_rsa_signature() -> str:
    """An EC key in a CSR whose signature is an RSA one (another key's): refused, not mistaken
    for ECDSA."""
    rsa_pem = x509.load_pem_x509_csr(csr_for(rsa.generate_private_key(65537, 2048)).encode())
    ec_csr = x509.load_pem_x509_csr(csr_for(ec.generate_private_key(ec.SECP256R1())).encode())
    rsa_der = rsa_pem.public_bytes(serialization.Encoding.DER)
    # CertificationRequest = SEQUENCE { info, algorithm, signature }: the EC info, RSA's rest.
    body = (
        ec_csr.tbs_certrequest_bytes
        + rsa_der[
            rsa_der.index(rsa_pem.tbs_certrequest_bytes) + len(rsa_pem.tbs_certrequest_bytes) :
        ]
    )
    der = b"\x30\x82" + len(body).to_bytes(2, "big") + body
    text = base64.encodebytes(der).decode()
    return f"-----BEGIN CERTIFICATE REQUEST-----\n{text}-----END CERTIFICATE REQUEST-----\n"


CSR_VECTORS: list[tuple[str, object, str]] = [
    ("empty", "", "CSR is empty"),
    ("not PEM", "hello", "not PEM"),
    (
        "garbage in PEM armour",
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        "not a valid PKCS#10",
    ),
    ("bad signature", _tampered_rsa_csr, "signature does not verify"),
    ("bad P-256 signature", lambda: _tampered_ec_csr(ec.SECP256R1()), "signature does not verify"),
    ("bad P-384 signature", lambda: _tampered_ec_csr(ec.SECP384R1()), "signature does not verify"),
    ("EC key, RSA signature", _ec_key_rsa_signature, "signature"),
    ("oversized", "-----BEGIN CERTIFICATE REQUEST-----\n" + "A" * MAX_CSR_BYTES, "the limit is"),
    ("RSA-1024", lambda: csr_for(rsa.generate_private_key(65537, 1024)), "at least RSA-2048"),  # noqa: S505
    ("P-521", lambda: csr_for(ec.generate_private_key(ec.SECP521R1())), "P-256 or P-384"),
    ("P-224", lambda: csr_for(ec.generate_private_key(ec.SECP224R1())), "P-256 or P-384"),
    ("Ed25519", lambda: _ed25519_csr(), "not allowed"),
    ("version 1", lambda: wire.csr_with_version(1), "not a valid CSR version"),
]


def _ed25519_csr() -> str:
    key = ed25519.Ed25519PrivateKey.generate()
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, None)
    return csr.public_bytes(serialization.Encoding.PEM).decode()


@pytest.mark.parametrize(("name", "csr", "message"), CSR_VECTORS, ids=[v[0] for v in CSR_VECTORS])
def test_bad_csrs_are_refused_with_a_reason(name: str, csr: object, message: str) -> None:
    text = csr() if callable(csr) else csr
    with pytest.raises(InvalidRequest, match=message):
        parse_csr(text)  # type: ignore[arg-type]


@pytest.mark.parametrize("key_type", list(KEYS))
def test_good_csrs_parse(key_type: str) -> None:
    assert parse_csr(csr_for(KEYS[key_type]())) is not None


@pytest.mark.parametrize("hash_", [hashes.SHA256(), hashes.SHA384(), hashes.SHA512()])
def test_ecdsa_csrs_verify_with_the_hash_they_name(hash_: hashes.HashAlgorithm) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    assert csr_public_key(_ec_csr_signed_with(key, hash_)) == key.public_key()


TTL_VECTORS = [
    # (requested seconds, default, max, expected or error fragment)
    (0, "1h", "24h", dt.timedelta(hours=1)),
    (0, "48h", "24h", dt.timedelta(hours=24)),
    (30, "1h", "24h", dt.timedelta(seconds=30)),
    (86400, "1h", "24h", dt.timedelta(hours=24)),
    (86401, "1h", "24h", "exceeds the maximum of 86400s"),
    (-5, "1h", "24h", "negative"),
]


@pytest.mark.parametrize(("requested", "default", "maximum", "expected"), TTL_VECTORS)
def test_ttl_rules(requested: int, default: str, maximum: str, expected: object) -> None:
    from meshward_common.durations import parse_duration

    args = (requested, parse_duration(default), parse_duration(maximum))
    if isinstance(expected, str):
        with pytest.raises(InvalidRequest, match=expected):
            effective_ttl(*args)
    else:
        assert effective_ttl(*args) == expected


@pytest.mark.parametrize(("key_type", "encipherment"), [("P-256", False), ("RSA-2048", True)])
def test_pre_encoded_extensions_read_back_as_the_typed_values(
    intermediate_authority: SigningAuthority, key_type: str, encipherment: bool
) -> None:
    # The fixed extensions are encoded once per authority and copied into every leaf: what a
    # verifier parses must be exactly the typed extension, with the same criticality.
    key = KEYS[key_type]().public_key()  # type: ignore[attr-defined]
    leaf = issue_svid(intermediate_authority, key, WORKLOAD, dt.timedelta(hours=1), NOW)[0]
    exts = {e.oid: e for e in leaf.extensions}
    assert [e.oid for e in leaf.extensions] == [
        x509.BasicConstraints.oid,
        x509.KeyUsage.oid,
        x509.ExtendedKeyUsage.oid,
        x509.SubjectAlternativeName.oid,
        x509.AuthorityKeyIdentifier.oid,
    ]
    assert exts[x509.BasicConstraints.oid].value == x509.BasicConstraints(
        ca=False, path_length=None
    )
    assert exts[x509.BasicConstraints.oid].critical
    usage = exts[x509.KeyUsage.oid]
    assert usage.critical
    assert isinstance(usage.value, x509.KeyUsage)
    assert usage.value.digital_signature
    assert usage.value.key_encipherment is encipherment
    assert not usage.value.key_cert_sign
    assert not exts[x509.ExtendedKeyUsage.oid].critical
    assert exts[x509.SubjectAlternativeName.oid].critical
    ski = intermediate_authority.cert.extensions.get_extension_for_class(
        x509.SubjectKeyIdentifier
    ).value
    aki = exts[x509.AuthorityKeyIdentifier.oid]
    assert not aki.critical
    assert isinstance(aki.value, x509.AuthorityKeyIdentifier)
    assert aki.value.key_identifier == ski.digest
    assert leaf.issuer == intermediate_authority.cert.subject


def test_csr_public_key_is_the_checked_key_of_the_csr() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    assert csr_public_key(csr_for(key)) == key.public_key()
    with pytest.raises(InvalidRequest, match="P-256 or P-384"):
        csr_public_key(csr_for(ec.generate_private_key(ec.SECP521R1())))
    with pytest.raises(InvalidRequest, match="not PEM"):
        csr_public_key("garbage")
