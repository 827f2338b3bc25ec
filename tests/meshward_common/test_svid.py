"""X.509-SVID rules (SPIFFE X509-SVID spec sections 4-5) as a table: each vector breaks one rule."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshward_common.errors import SvidError
from meshward_common.svid import (
    leaf_problems,
    signing_cert_problems,
    spiffe_id_of,
    verify_x509_svid,
    verify_x509_svid_in,
)

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
ID = "spiffe://cluster.local/ns/default/sa/reviews"
SA, CA = ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH


def _ku(*, ds: bool = False, cert_sign: bool = False, crl: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(ds, False, False, False, False, cert_sign, crl, False, False)


@dataclass(frozen=True)
class Spec:
    """A certificate to build; defaults describe a valid leaf."""

    uris: tuple[str, ...] = (ID,)
    bc: tuple[bool, bool] | None = (False, True)  # (ca, critical)
    ku: tuple[x509.KeyUsage, bool] | None = (_ku(ds=True), True)  # (usage, critical)
    eku: tuple[x509.ObjectIdentifier, ...] | None = (SA, CA)
    key: Callable[[], ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey] = field(
        default=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    not_before: dt.datetime = NOW - dt.timedelta(hours=1)
    not_after: dt.datetime = NOW + dt.timedelta(hours=1)


@dataclass
class Issuer:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def build(
    spec: Spec, issuer: Issuer | None = None, name: str = "leaf"
) -> tuple[x509.Certificate, object]:
    key = spec.key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(spec.not_before)
        .not_valid_after(spec.not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is not None:
        b = b.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    if spec.uris:
        b = b.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in spec.uris]),
            critical=False,
        )
    if spec.bc is not None:
        b = b.add_extension(
            x509.BasicConstraints(ca=spec.bc[0], path_length=None), critical=spec.bc[1]
        )
    if spec.ku is not None:
        b = b.add_extension(spec.ku[0], critical=spec.ku[1])
    if spec.eku is not None:
        b = b.add_extension(x509.ExtendedKeyUsage(list(spec.eku)), critical=False)
    return b.sign(issuer.key if issuer else key, hashes.SHA256()), key


ROOT_SPEC = Spec(
    uris=("spiffe://cluster.local",),
    bc=(True, True),
    ku=(_ku(cert_sign=True, crl=True), True),
    eku=None,
    not_before=NOW - dt.timedelta(days=1),
    not_after=NOW + dt.timedelta(days=365),
)


@pytest.fixture(scope="module")
def root() -> Issuer:
    cert, key = build(ROOT_SPEC, name="root")
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return Issuer(cert, key)


VALID_LEAF = Spec()

LEAF_VECTORS: list[tuple[str, Spec, str]] = [
    ("no URI SAN", replace(VALID_LEAF, uris=()), "0 URI SANs"),
    ("two URI SANs", replace(VALID_LEAF, uris=(ID, ID + "2")), "2 URI SANs"),
    ("URI SAN not SPIFFE", replace(VALID_LEAF, uris=("https://x/y",)), "not a SPIFFE ID"),
    ("ID without path", replace(VALID_LEAF, uris=("spiffe://cluster.local",)), "no path"),
    ("basicConstraints missing", replace(VALID_LEAF, bc=None), "basicConstraints missing"),
    ("CA:true leaf", replace(VALID_LEAF, bc=(True, True)), "CA:true"),
    ("basicConstraints not critical", replace(VALID_LEAF, bc=(False, False)), "not critical"),
    ("keyUsage missing", replace(VALID_LEAF, ku=None), "keyUsage missing"),
    (
        "keyUsage not critical",
        replace(VALID_LEAF, ku=(_ku(ds=True), False)),
        "keyUsage is not critical",
    ),
    (
        "no digitalSignature",
        replace(VALID_LEAF, ku=(_ku(crl=True), True)),
        "lacks digitalSignature",
    ),
    (
        "keyCertSign on leaf",
        replace(VALID_LEAF, ku=(_ku(ds=True, cert_sign=True), True)),
        "keyCertSign",
    ),
    ("cRLSign on leaf", replace(VALID_LEAF, ku=(_ku(ds=True, crl=True), True)), "cRLSign"),
    ("EKU missing", replace(VALID_LEAF, eku=None), "extendedKeyUsage missing"),
    ("EKU lacks serverAuth", replace(VALID_LEAF, eku=(CA,)), "lacks serverAuth"),
    ("EKU lacks clientAuth", replace(VALID_LEAF, eku=(SA,)), "lacks clientAuth"),
    (
        "P-521 key",
        replace(VALID_LEAF, key=lambda: ec.generate_private_key(ec.SECP521R1())),
        "P-256 or P-384",
    ),
    (
        "RSA-1024 key",
        replace(VALID_LEAF, key=lambda: rsa.generate_private_key(65537, 1024)),  # noqa: S505
        "at least RSA-2048",
    ),
]


def test_a_valid_leaf_breaks_no_rule(root: Issuer) -> None:
    leaf, _ = build(VALID_LEAF, root)
    assert leaf_problems(leaf) == []
    assert str(verify_x509_svid([leaf], [root.cert], NOW)) == ID


@pytest.mark.parametrize(
    "key",
    [
        lambda: ec.generate_private_key(ec.SECP384R1()),
        lambda: rsa.generate_private_key(65537, 2048),
    ],
    ids=["P-384", "RSA-2048"],
)
def test_other_allowed_keys_are_valid(root: Issuer, key: Callable[[], object]) -> None:
    leaf, _ = build(replace(VALID_LEAF, key=key), root)  # type: ignore[arg-type]
    assert leaf_problems(leaf) == []


@pytest.mark.parametrize(
    ("name", "spec", "problem"), LEAF_VECTORS, ids=[v[0] for v in LEAF_VECTORS]
)
def test_each_broken_leaf_rule_is_reported(
    root: Issuer, name: str, spec: Spec, problem: str
) -> None:
    leaf, _ = build(spec, root)
    problems = leaf_problems(leaf)
    assert any(problem in p for p in problems), problems
    with pytest.raises(SvidError) as info:
        verify_x509_svid([leaf], [root.cert], NOW)
    assert any(problem in p for p in info.value.problems)


def test_all_problems_are_reported_at_once(root: Issuer) -> None:
    leaf, _ = build(replace(VALID_LEAF, bc=None, ku=None, eku=None), root)
    problems = leaf_problems(leaf)
    assert len(problems) == 3


SIGNING_VECTORS: list[tuple[str, Spec, str]] = [
    ("not a CA", replace(ROOT_SPEC, bc=(False, True)), "lacks basicConstraints CA:true"),
    ("no keyUsage", replace(ROOT_SPEC, ku=None), "lacks keyUsage"),
    ("no keyCertSign", replace(ROOT_SPEC, ku=(_ku(crl=True), True)), "lacks keyCertSign"),
    (
        "ID with a path",
        replace(ROOT_SPEC, uris=("spiffe://cluster.local/ca",)),
        "must have no path",
    ),
    (
        "two URI SANs",
        replace(ROOT_SPEC, uris=("spiffe://cluster.local", "spiffe://other")),
        "more than one URI SAN",
    ),
]


def test_a_valid_signing_cert_breaks_no_rule(root: Issuer) -> None:
    assert signing_cert_problems(root.cert) == []


@pytest.mark.parametrize(
    ("name", "spec", "problem"), SIGNING_VECTORS, ids=[v[0] for v in SIGNING_VECTORS]
)
def test_each_broken_signing_rule_is_reported(
    root: Issuer, name: str, spec: Spec, problem: str
) -> None:
    inter, _ = build(spec, root, name="intermediate")
    assert any(problem in p for p in signing_cert_problems(inter))


def test_chain_through_intermediate_verifies_and_bad_intermediate_is_refused(root: Issuer) -> None:
    inter_spec = replace(ROOT_SPEC, not_after=NOW + dt.timedelta(days=30))
    inter, ikey = build(inter_spec, root, name="intermediate")
    issuer = Issuer(inter, ikey)  # type: ignore[arg-type]
    leaf, _ = build(VALID_LEAF, issuer)
    assert str(verify_x509_svid([leaf, inter], [root.cert], NOW)) == ID
    # Without the intermediate there is no path to the root.
    with pytest.raises(SvidError, match="does not verify"):
        verify_x509_svid([leaf], [root.cert], NOW)
    bad_inter, bkey = build(replace(inter_spec, ku=(_ku(crl=True), True)), root, name="bad")
    leaf2, _ = build(VALID_LEAF, Issuer(bad_inter, bkey))  # type: ignore[arg-type]
    with pytest.raises(SvidError, match="keyCertSign"):
        verify_x509_svid([leaf2, bad_inter], [root.cert], NOW)


def test_time_and_bundle_are_checked(root: Issuer) -> None:
    leaf, _ = build(VALID_LEAF, root)
    with pytest.raises(SvidError, match="expired"):
        verify_x509_svid([leaf], [root.cert], NOW + dt.timedelta(hours=2))
    with pytest.raises(SvidError, match="not valid before"):
        verify_x509_svid([leaf], [root.cert], NOW - dt.timedelta(hours=2))
    other, _ = build(ROOT_SPEC, name="other root")
    with pytest.raises(SvidError, match="does not verify"):
        verify_x509_svid([leaf], [other], NOW)
    with pytest.raises(SvidError, match="empty certificate chain"):
        verify_x509_svid([], [root.cert], NOW)
    with pytest.raises(SvidError, match="empty trust bundle"):
        verify_x509_svid([leaf], [], NOW)


def test_a_chain_is_verified_with_the_bundle_of_its_own_trust_domain(root: Issuer) -> None:
    other, okey = build(ROOT_SPEC, name="b.example root")
    bundles = {"cluster.local": [root.cert], "b.example": [other]}
    ours, _ = build(VALID_LEAF, root)
    assert str(verify_x509_svid_in([ours], bundles, NOW)) == ID
    theirs, _ = build(
        replace(VALID_LEAF, uris=("spiffe://b.example/ns/x/sa/y",)), Issuer(other, okey)
    )  # type: ignore[arg-type]
    assert str(verify_x509_svid_in([theirs], bundles, NOW)) == "spiffe://b.example/ns/x/sa/y"
    # Names b.example, chains to cluster.local's root: both roots are trusted, and still refused.
    forged, _ = build(replace(VALID_LEAF, uris=("spiffe://b.example/ns/x/sa/y",)), root)
    with pytest.raises(SvidError, match="does not verify"):
        verify_x509_svid_in([forged], bundles, NOW)
    assert str(verify_x509_svid([forged], [root.cert, other], NOW)).startswith("spiffe://b."), (
        "a pool of every root would have taken it"
    )
    with pytest.raises(SvidError, match=r"no trust bundle for trust domain b\.example"):
        verify_x509_svid_in([theirs], {"cluster.local": [root.cert]}, NOW)


def test_leaf_outliving_its_signer_is_refused(root: Issuer) -> None:
    leaf, _ = build(replace(VALID_LEAF, not_after=ROOT_SPEC.not_after + dt.timedelta(days=1)), root)
    with pytest.raises(SvidError, match="outlives"):
        verify_x509_svid([leaf], [root.cert], NOW)


def test_spiffe_id_of_returns_the_one_uri_san(root: Issuer) -> None:
    leaf, _ = build(VALID_LEAF, root)
    assert str(spiffe_id_of(leaf)) == ID
