"""SPIFFE bundles in the standard's format: a JWK Set (RFC 7517) with `spiffe_sequence`,
`spiffe_refresh_hint` and one JWK per X.509 authority (`use: x509-svid`, the root in `x5c`).

What a bundle endpoint serves and what its clients parse (SPIFFE Trust Domain and Bundle, §4;
X509-SVID, §6). Pure: bytes in, values out. A bundle does not name its trust domain, so the
caller says which one it is for; a root that names another trust domain in its URI SAN is refused,
as is anything that is not a usable CA certificate. Keys of unknown type or use are ignored (the
spec's MUST), so a bundle with JWT-SVID keys beside its X.509 roots parses.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from meshward_common.errors import SpiffeIdError, SvidError
from meshward_common.spiffe_id import SpiffeId
from meshward_common.svid import fingerprint_sha256, signing_cert_problems, uri_sans

X509_SVID_USE = "x509-svid"
MAX_BUNDLE_BYTES = 1024 * 1024  # SPIRE's bundles with hundreds of keys stay far below
_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}


@dataclass(frozen=True)
class SpiffeBundle:
    """One trust domain's bundle: its X.509 authorities, and the publisher's sequence number and
    refresh hint (seconds) when it set them."""

    trust_domain: str
    x509_authorities: tuple[x509.Certificate, ...]
    sequence: int | None = None
    refresh_hint: int | None = None

    def same_keys(self, other: SpiffeBundle) -> bool:
        return _fingerprints(self.x509_authorities) == _fingerprints(other.x509_authorities)


def _fingerprints(certs: Sequence[x509.Certificate]) -> list[str]:
    return sorted(fingerprint_sha256(c) for c in certs)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _uint(value: int, size: int | None = None) -> str:
    length = size if size is not None else max(1, (value.bit_length() + 7) // 8)
    return _b64url(value.to_bytes(length, "big"))


def _jwk(cert: x509.Certificate) -> dict[str, Any]:
    key = cert.public_key()
    jwk: dict[str, Any] = {"use": X509_SVID_USE}
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in _CURVES:
        size = (key.curve.key_size + 7) // 8
        point = key.public_numbers()
        jwk |= {
            "kty": "EC",
            "crv": _CURVES[key.curve.name],
            "x": _uint(point.x, size),
            "y": _uint(point.y, size),
        }
    elif isinstance(key, rsa.RSAPublicKey):
        numbers = key.public_numbers()
        jwk |= {"kty": "RSA", "n": _uint(numbers.n), "e": _uint(numbers.e)}
    else:
        raise SvidError(
            [f"root {cert.subject.rfc4514_string()}: key is neither RSA nor EC on a NIST curve"]
        )
    jwk["x5c"] = [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]
    return jwk


def encode_bundle(bundle: SpiffeBundle) -> bytes:
    """The bundle as a bundle endpoint serves it (UTF-8 JSON)."""
    doc: dict[str, Any] = {"keys": [_jwk(c) for c in bundle.x509_authorities]}
    if bundle.sequence is not None:
        doc["spiffe_sequence"] = bundle.sequence
    if bundle.refresh_hint is not None:
        doc["spiffe_refresh_hint"] = bundle.refresh_hint
    return json.dumps(doc, indent=2).encode() + b"\n"


def parse_bundle(data: bytes, trust_domain: str, source: str) -> SpiffeBundle:
    """Parse a SPIFFE bundle for `trust_domain`; SvidError with one line per problem, each
    naming `source` (a URL or file)."""
    if len(data) > MAX_BUNDLE_BYTES:
        raise SvidError([f"{source}: bundle is larger than {MAX_BUNDLE_BYTES} bytes"])
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise SvidError([f"{source}: bundle is not UTF-8 JSON: {exc}"]) from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise SvidError([f"{source}: bundle is not a JWK Set (a JSON object with a 'keys' list)"])
    sequence = _optional_int(doc, "spiffe_sequence", source, minimum=0)
    refresh_hint = _optional_int(doc, "spiffe_refresh_hint", source, minimum=1)
    roots: list[x509.Certificate] = []
    problems: list[str] = []
    for index, jwk in enumerate(doc["keys"]):
        where = f"{source}: keys[{index}]"
        if not isinstance(jwk, dict):
            problems.append(f"{where}: not a JSON object")
            continue
        if jwk.get("use") != X509_SVID_USE or jwk.get("kty") not in ("EC", "RSA"):
            continue  # a JWT-SVID key or an unknown type or use: ignored, as the spec says
        try:
            roots.append(_authority(jwk, trust_domain, where))
        except SvidError as exc:
            problems.extend(exc.problems)
    if problems:
        raise SvidError(problems)
    if not roots:
        raise SvidError([f"{source}: bundle holds no X.509 authority (no x509-svid key)"])
    return SpiffeBundle(trust_domain, tuple(roots), sequence, refresh_hint)


def _optional_int(doc: dict[str, Any], key: str, source: str, *, minimum: int) -> int | None:
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SvidError([f"{source}: {key} must be an integer of at least {minimum}"])
    return value


def _authority(jwk: dict[str, Any], trust_domain: str, where: str) -> x509.Certificate:
    x5c = jwk.get("x5c")
    if not isinstance(x5c, list) or len(x5c) != 1 or not isinstance(x5c[0], str):
        raise SvidError([f"{where}: an x509-svid key must hold exactly one certificate in x5c"])
    try:
        cert = x509.load_der_x509_certificate(base64.b64decode(x5c[0], validate=True))
    except (binascii.Error, ValueError) as exc:
        raise SvidError([f"{where}: x5c is not a base64 DER certificate: {exc}"]) from exc
    problems = [f"{where}: {p}" for p in signing_cert_problems(cert)]
    if not _same_key(jwk, cert):
        problems.append(f"{where}: the key parameters do not match the certificate's key")
    for uri in uri_sans(cert):
        try:
            named = SpiffeId.parse(uri).trust_domain
        except SpiffeIdError:
            continue  # signing_cert_problems reported it
        if named != trust_domain:
            problems.append(
                f"{where}: root names trust domain {named}, not {trust_domain}: "
                "a bundle for the wrong trust domain"
            )
    if problems:
        raise SvidError(problems)
    return cert


def _same_key(jwk: dict[str, Any], cert: x509.Certificate) -> bool:
    """True if the JWK's key parameters are the certificate's key (the JWK may carry more)."""
    try:
        ours = _jwk(cert)
    except SvidError:
        return False
    keys = ("kty", "crv", "x", "y") if ours["kty"] == "EC" else ("kty", "n", "e")
    return all(jwk.get(k) == ours.get(k) for k in keys)


def load_bundle_text(data: bytes, trust_domain: str, source: str) -> SpiffeBundle:
    """An operator's bundle file: a SPIFFE bundle (JSON), or PEM certificates (the roots)."""
    if data.lstrip().startswith(b"{"):
        return parse_bundle(data, trust_domain, source)
    try:
        roots = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise SvidError(
            [f"{source}: neither a SPIFFE bundle (JSON) nor PEM certificates: {exc}"]
        ) from exc
    jwks = {"keys": [_jwk(c) for c in roots]}
    return parse_bundle(json.dumps(jwks).encode(), trust_domain, source)
