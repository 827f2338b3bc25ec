"""One key rule for every SVID: the CA's CSR check, the SVID leaf rules and the sidecar's intake
of a Workload API answer agree on every key type.

The copies disagreed on Ed25519 (the sidecar took it, the CA and the SVID rules refused it). The
rule kept is Istio's: its CA signs ECDSA (P-256, its default, or P-384) and RSA keys, and its
agents generate nothing else; a key type one component accepts and another refuses would make an
SVID that works in one place and not the other.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from ca.issuer import parse_csr
from meshward_common.errors import InvalidRequest, SvidError
from meshward_common.svid import key_problem, leaf_problems
from sidecar_tls.identity import identity_from_response
from sidecar_tls.workload_api.x509svid_wire import X509SvidMessage, X509SvidResponse
from tests.harness.pki import ca_cert, svid_leaf

ID = "spiffe://cluster.local/ns/default/sa/reviews"
NOW = dt.datetime.now(dt.UTC)

KEYS: list[tuple[str, Callable[[], CertificateIssuerPrivateKeyTypes], str]] = [
    ("P-256", lambda: ec.generate_private_key(ec.SECP256R1()), ""),
    ("P-384", lambda: ec.generate_private_key(ec.SECP384R1()), ""),
    ("RSA-2048", lambda: rsa.generate_private_key(65537, 2048), ""),
    ("RSA-1024", lambda: rsa.generate_private_key(65537, 1024), "at least RSA-2048"),  # noqa: S505
    ("P-521", lambda: ec.generate_private_key(ec.SECP521R1()), "P-256 or P-384"),
    ("Ed25519", ed25519.Ed25519PrivateKey.generate, "not allowed"),
    ("Ed448", ed448.Ed448PrivateKey.generate, "not allowed"),
]


def _csr(key: CertificateIssuerPrivateKeyTypes) -> str:
    algorithm = (
        None
        if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey)
        else hashes.SHA256()
    )
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, algorithm)
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _served(key: CertificateIssuerPrivateKeyTypes) -> X509SvidResponse:
    """A Workload API answer carrying an SVID for `key`, signed by a conforming test CA."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    root = ca_cert(
        ca_key, "root", "cluster.local", NOW - dt.timedelta(hours=1), NOW + dt.timedelta(days=1)
    )
    leaf = svid_leaf(
        root,
        ca_key,
        key.public_key(),
        [ID],
        NOW - dt.timedelta(minutes=1),
        NOW + dt.timedelta(hours=1),
    )  # type: ignore[arg-type]
    der = serialization.Encoding.DER
    key_der = key.private_bytes(
        der, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return X509SvidResponse(
        (X509SvidMessage(ID, leaf.public_bytes(der), key_der, root.public_bytes(der)),)
    )


@pytest.mark.parametrize(("name", "make", "refusal"), KEYS, ids=[k[0] for k in KEYS])
def test_every_component_applies_the_same_key_rule(
    name: str, make: Callable[[], CertificateIssuerPrivateKeyTypes], refusal: str
) -> None:
    key = make()
    served = _served(key)
    leaf = x509.load_der_x509_certificate(served.svids[0].x509_svid)
    if not refusal:
        assert key_problem(key.public_key()) == ""
        assert parse_csr(_csr(key)).public_key() == key.public_key()
        assert leaf_problems(leaf) == []
        assert str(identity_from_response(served).chain[0].subject) == str(leaf.subject)
        return
    assert refusal in key_problem(key.public_key())
    with pytest.raises(InvalidRequest, match=refusal):
        parse_csr(_csr(key))
    assert any(refusal in p for p in leaf_problems(leaf))
    with pytest.raises(SvidError, match=refusal):
        identity_from_response(served)
