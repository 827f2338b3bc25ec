"""X.509-SVID rules (SPIFFE X509-SVID spec, section 4 and 5), as pure functions.

`svid_problems` lists every rule a certificate breaks; `verify_x509_svid` verifies a chain against a
trust bundle at a given time and returns the leaf's SPIFFE ID. The caller passes `now`, so tests
need no clock.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from meshward_common.errors import SpiffeIdError, SvidError
from meshward_common.spiffe_id import SpiffeId


def uri_sans(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(ext.value.get_values_for_type(x509.UniformResourceIdentifier))


def spiffe_id_of(cert: x509.Certificate) -> SpiffeId:
    """The SPIFFE ID of an SVID: its one URI SAN, strictly parsed."""
    uris = uri_sans(cert)
    if len(uris) != 1:
        raise SvidError([f"certificate has {len(uris)} URI SANs, an SVID has exactly one"])
    try:
        return SpiffeId.parse(uris[0])
    except SpiffeIdError as exc:
        raise SvidError([f"URI SAN is not a SPIFFE ID: {exc}"]) from exc


_E = TypeVar("_E", bound=x509.ExtensionType)


def _ext(cert: x509.Certificate, cls: type[_E]) -> x509.Extension[_E] | None:
    try:
        return cert.extensions.get_extension_for_class(cls)
    except x509.ExtensionNotFound:
        return None


def leaf_problems(cert: x509.Certificate) -> list[str]:
    """Every X.509-SVID leaf rule this certificate breaks (empty list: it is a valid leaf)."""
    problems: list[str] = []
    try:
        spiffe_id = spiffe_id_of(cert)
        if spiffe_id.path == "":
            problems.append("leaf SPIFFE ID has no path (only a trust domain)")
    except SvidError as exc:
        problems.extend(exc.problems)
    bc = _ext(cert, x509.BasicConstraints)
    if bc is None:
        problems.append("basicConstraints missing")
    else:
        if bc.value.ca:
            problems.append("leaf has basicConstraints CA:true")
        if not bc.critical:
            problems.append("basicConstraints is not critical")
    ku = _ext(cert, x509.KeyUsage)
    if ku is None:
        problems.append("keyUsage missing")
    else:
        value = ku.value
        if not ku.critical:
            problems.append("keyUsage is not critical")
        if not value.digital_signature:
            problems.append("keyUsage lacks digitalSignature")
        if value.key_cert_sign:
            problems.append("leaf keyUsage has keyCertSign")
        if value.crl_sign:
            problems.append("leaf keyUsage has cRLSign")
    eku = _ext(cert, x509.ExtendedKeyUsage)
    if eku is not None:
        usages = set(eku.value)
        for needed in (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH):
            if needed not in usages:
                problems.append(f"extendedKeyUsage lacks {needed._name}")
    else:
        problems.append("extendedKeyUsage missing (meshward SVIDs carry serverAuth and clientAuth)")
    problems.extend(_key_problems(cert))
    return problems


def signing_cert_problems(cert: x509.Certificate) -> list[str]:
    """Every rule a signing (CA) certificate in an SVID chain breaks."""
    problems: list[str] = []
    bc = _ext(cert, x509.BasicConstraints)
    if bc is None or not bc.value.ca:
        problems.append("signing certificate lacks basicConstraints CA:true")
    ku = _ext(cert, x509.KeyUsage)
    if ku is None:
        problems.append("signing certificate lacks keyUsage")
    else:
        value = ku.value
        if not value.key_cert_sign:
            problems.append("signing certificate keyUsage lacks keyCertSign")
    uris = uri_sans(cert)
    if len(uris) > 1:
        problems.append("signing certificate has more than one URI SAN")
    for uri in uris:
        try:
            if SpiffeId.parse(uri).path:
                problems.append("signing certificate SPIFFE ID must have no path")
        except SpiffeIdError as exc:
            problems.append(f"signing certificate URI SAN is not a SPIFFE ID: {exc}")
    return problems


ALLOWED_CURVES = frozenset({"secp256r1", "secp384r1"})
MIN_RSA_BITS = 2048


def key_problem(key: object) -> str:
    """Why an SVID may not carry `key` (a public key), or "" when it may.

    The mesh's one key rule, for every SVID it issues, serves or accepts: ECDSA on P-256 (the
    default) or P-384, or RSA of at least 2048 bits: what Istio's CA signs and its agents
    generate. Ed25519 and other curves are refused everywhere alike, so a key one component
    accepts is never refused by another.
    """
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ALLOWED_CURVES:
            return f"EC key on curve {key.curve.name}; P-256 or P-384 required"
        return ""
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            return f"RSA-{key.key_size} key; at least RSA-{MIN_RSA_BITS} required"
        return ""
    return f"{type(key).__name__} keys are not allowed; use EC P-256 or P-384, or RSA"


def _key_problems(cert: x509.Certificate) -> list[str]:
    problem = key_problem(cert.public_key())
    return [problem] if problem else []


def _ee_policy() -> ExtensionPolicy:
    # WebPKI's policy requires a DNS/IP SAN match; SPIFFE leaves carry one URI SAN and are
    # checked by leaf_problems instead. Keep the chain-building checks, relax only the SAN rule.
    return (
        ExtensionPolicy.permit_all()
        .require_present(x509.BasicConstraints, Criticality.AGNOSTIC, None)
        .require_present(x509.KeyUsage, Criticality.AGNOSTIC, None)
    )


def _lifetime_nesting_problems(
    chain: Sequence[x509.Certificate], bundle: Sequence[x509.Certificate]
) -> list[str]:
    """No certificate in the chain may outlive the one that signed it (design: "notAfter never
    past the signing certificate's")."""
    problems: list[str] = []
    candidates = [*chain[1:], *bundle]
    for cert in chain:
        # Several roots may share a subject during rotation: it is enough to fit inside one.
        parents = [p for p in candidates if p is not cert and p.subject == cert.issuer]
        if parents and all(cert.not_valid_after_utc > p.not_valid_after_utc for p in parents):
            parent = parents[0]
            problems.append(
                f"certificate {cert.subject.rfc4514_string() or '(leaf)'} outlives its signer "
                f"{parent.subject.rfc4514_string()} ({cert.not_valid_after_utc.isoformat()} > "
                f"{parent.not_valid_after_utc.isoformat()})"
            )
    return problems


def verify_x509_svid(
    chain: Sequence[x509.Certificate],
    bundle: Sequence[x509.Certificate],
    now: dt.datetime,
) -> SpiffeId:
    """Verify an X.509-SVID chain (leaf first) against trust bundle roots at time `now`.

    Returns the leaf's SPIFFE ID. Raises SvidError listing every problem found.
    """
    if not chain:
        raise SvidError(["empty certificate chain"])
    if not bundle:
        raise SvidError(["empty trust bundle"])
    leaf, intermediates = chain[0], list(chain[1:])
    problems = leaf_problems(leaf)
    for cert in intermediates:
        problems.extend(signing_cert_problems(cert))
    if now < leaf.not_valid_before_utc:
        problems.append(f"leaf not valid before {leaf.not_valid_before_utc.isoformat()}")
    if now > leaf.not_valid_after_utc:
        problems.append(f"leaf expired at {leaf.not_valid_after_utc.isoformat()}")
    problems.extend(_lifetime_nesting_problems(chain, bundle))
    if problems:
        raise SvidError(problems)
    builder = (
        PolicyBuilder()
        .store(Store(list(bundle)))
        .time(now)
        .max_chain_depth(8)
        .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=_ee_policy())
    )
    try:
        builder.build_client_verifier().verify(leaf, intermediates)
    except VerificationError as exc:
        raise SvidError([f"chain does not verify against the trust bundle: {exc}"]) from exc
    return spiffe_id_of(leaf)


def verify_x509_svid_in(
    chain: Sequence[x509.Certificate],
    bundles: Mapping[str, Sequence[x509.Certificate]],
    now: dt.datetime,
) -> SpiffeId:
    """Verify an X.509-SVID against the bundle of its own trust domain (as go-spiffe's
    `x509svid.Verify` picks it from a bundle source), never against a pool of every root: a
    certificate naming trust domain B that chains to A's root is refused."""
    if not chain:
        raise SvidError(["empty certificate chain"])
    trust_domain = spiffe_id_of(chain[0]).trust_domain
    bundle = bundles.get(trust_domain)
    if not bundle:
        raise SvidError([f"no trust bundle for trust domain {trust_domain}"])
    return verify_x509_svid(chain, bundle, now)


def load_pem_chain(data: bytes) -> list[x509.Certificate]:
    certs = x509.load_pem_x509_certificates(data)
    if not certs:
        raise SvidError(["no PEM certificates found"])
    return certs


def pem_of(certs: Sequence[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def der_chain(certs: Sequence[x509.Certificate]) -> bytes:
    """Concatenated DER, the Workload API's encoding of a chain or bundle."""
    return b"".join(c.public_bytes(serialization.Encoding.DER) for c in certs)


def split_der_certificates(data: bytes) -> list[bytes]:
    """Split concatenated DER certificates (each an ASN.1 SEQUENCE with a definite length)."""
    out: list[bytes] = []
    pos = 0
    while pos < len(data):
        if data[pos] != 0x30 or pos + 2 > len(data):
            raise ValueError(f"no DER SEQUENCE at byte {pos}")
        first = data[pos + 1]
        header = 2
        if first < 0x80:
            length = first
        else:
            count = first & 0x7F
            if not 1 <= count <= 4 or pos + 2 + count > len(data):
                raise ValueError(f"bad DER length at byte {pos}")
            length = int.from_bytes(data[pos + 2 : pos + 2 + count], "big")
            header += count
        end = pos + header + length
        if end > len(data):
            raise ValueError(f"DER certificate at byte {pos} runs past the end")
        out.append(data[pos:end])
        pos = end
    return out


def certificates_from_der(data: bytes) -> list[x509.Certificate]:
    """Concatenated DER certificates (a Workload API or discovery bundle) as certificates."""
    try:
        return [x509.load_der_x509_certificate(d) for d in split_der_certificates(data)]
    except ValueError as exc:
        raise SvidError([f"bundle is not concatenated DER certificates: {exc}"]) from exc


def fingerprint_sha256(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


__all__ = [
    "ExtensionOID",
    "certificates_from_der",
    "der_chain",
    "fingerprint_sha256",
    "key_problem",
    "leaf_problems",
    "load_pem_chain",
    "pem_of",
    "signing_cert_problems",
    "spiffe_id_of",
    "split_der_certificates",
    "uri_sans",
    "verify_x509_svid",
    "verify_x509_svid_in",
]
