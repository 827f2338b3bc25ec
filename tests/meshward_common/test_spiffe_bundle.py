"""SPIFFE bundles (JWK Sets): what we serve parses back, what the spec says to ignore is ignored,
and everything else that is wrong is refused with a line naming the key."""

from __future__ import annotations

import base64
import datetime as dt
import json
import re

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ca.authority import make_root
from meshward_common.errors import SvidError
from meshward_common.spiffe_bundle import (
    SpiffeBundle,
    encode_bundle,
    load_bundle_text,
    parse_bundle,
)
from meshward_common.svid import pem_of
from tests.sidecar_tls.testca import MiniCA

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
B = "b.example"


def _root(td: str = B) -> x509.Certificate:
    return make_root(td, NOW)[0]


def _rsa_root() -> x509.Certificate:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(x509.NameOID.ORGANIZATION_NAME, B)])
    return (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(7).not_valid_before(NOW).not_valid_after(NOW + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                       critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip


def test_a_served_bundle_parses_back_with_its_sequence_and_refresh_hint() -> None:
    roots = (_root(), _rsa_root())
    data = encode_bundle(SpiffeBundle(B, roots, 7, 300))
    doc = json.loads(data)
    assert doc["spiffe_sequence"] == 7
    assert doc["spiffe_refresh_hint"] == 300
    assert [k["use"] for k in doc["keys"]] == ["x509-svid", "x509-svid"]
    assert [k["kty"] for k in doc["keys"]] == ["EC", "RSA"]
    assert doc["keys"][0]["crv"] == "P-256"
    assert doc["keys"][1]["e"] == "AQAB"
    der = base64.b64decode(doc["keys"][0]["x5c"][0])
    assert der == roots[0].public_bytes(serialization.Encoding.DER)
    parsed = parse_bundle(data, B, "test")
    assert parsed.x509_authorities == roots
    assert (parsed.sequence, parsed.refresh_hint) == (7, 300)


def test_keys_of_other_uses_or_types_are_ignored_as_the_spec_says() -> None:
    doc = json.loads(encode_bundle(SpiffeBundle(B, (_root(),))))
    doc["keys"] += [
        {"use": "jwt-svid", "kty": "EC", "kid": "k1", "crv": "P-256", "x": "AA", "y": "AA"},
        {"use": "x509-svid", "kty": "OKP", "x5c": ["!!"]},
        {"use": "future-svid", "kty": "EC"},
    ]
    assert len(parse_bundle(json.dumps(doc).encode(), B, "test").x509_authorities) == 1


def _one_key(**changes: object) -> bytes:
    doc = json.loads(encode_bundle(SpiffeBundle(B, (_root(),), 1)))
    doc["keys"][0].update(changes)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xff", "not UTF-8 JSON"),
        (b"[]", "not a JWK Set"),
        (b'{"keys": {}}', "not a JWK Set"),
        (b'{"keys": []}', "holds no X.509 authority"),
        (b'{"keys": [], "spiffe_sequence": -1}', "spiffe_sequence must be an integer"),
        (b'{"keys": [], "spiffe_refresh_hint": "5m"}', "spiffe_refresh_hint must be an integer"),
        (b" " * (1024 * 1024 + 1), "larger than"),
        (_one_key(x5c=[]), "exactly one certificate"),
        (_one_key(x5c=["bm90IGEgY2VydA=="]), "not a base64 DER certificate"),
        (_one_key(x="AAAA"), "do not match the certificate's key"),
    ],
)
def test_a_malformed_bundle_is_refused_in_one_line(data: bytes, reason: str) -> None:
    with pytest.raises(SvidError, match=reason) as info:
        parse_bundle(data, B, "https://b/")
    assert all(p.startswith("https://b/") for p in info.value.problems)


def test_roots_naming_another_trust_domain_are_a_bundle_for_the_wrong_trust_domain() -> None:
    data = encode_bundle(SpiffeBundle(B, (_root("c.example"),)))
    with pytest.raises(
        SvidError, match=re.escape("root names trust domain c.example, not b.example")
    ):
        parse_bundle(data, B, "test")


def test_a_leaf_is_no_authority() -> None:
    ca = MiniCA.create(B)
    leaf = ca.issue(f"spiffe://{B}/ns/default/sa/x").chain[0]
    doc = json.loads(encode_bundle(SpiffeBundle(B, (ca.cert,))))
    doc["keys"][0]["x5c"] = [
        base64.b64encode(leaf.public_bytes(serialization.Encoding.DER)).decode()
    ]
    with pytest.raises(SvidError, match="CA:true"):
        parse_bundle(json.dumps(doc).encode(), B, "test")


def test_an_operator_bundle_file_may_be_pem_or_json() -> None:
    root = _root()
    assert load_bundle_text(pem_of([root]), B, "f").x509_authorities == (root,)
    json_text = encode_bundle(SpiffeBundle(B, (root,), 3))
    assert load_bundle_text(json_text, B, "f").sequence == 3
    with pytest.raises(SvidError, match="neither a SPIFFE bundle"):
        load_bundle_text(b"hello", B, "f")
