"""An X.509-SVID leaf's DER, assembled from pieces encoded once per signing authority (RFC 5280
section 4.1, DER as X.690 defines it).

cryptography's CertificateBuilder encodes the issuer name, the subject key and every extension
again for each certificate, which here costs more than the signature itself. Everything the leaves
of one authority share is encoded once (`LeafDer.of`); per certificate only the serial number, the
validity, the subject key and the subject alternative name are placed, and the signer signs the
result. The TBSCertificate is byte for byte what CertificateBuilder produces for the same values
(tests/ca/test_leaf_der.py compares them), so the certificates are the same certificates.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

_SEQUENCE = 0x30
_INTEGER = 0x02
_BOOLEAN_TRUE = b"\x01\x01\xff"
_OCTET_STRING = 0x04
_OID = 0x06
_UTC_TIME = 0x17
_GENERALIZED_TIME = 0x18
_NULL = b"\x05\x00"
_VERSION_3 = b"\xa0\x03\x02\x01\x02"  # [0] EXPLICIT INTEGER 2
_EMPTY_NAME = b"\x30\x00"
_URI = 0x86  # GeneralName uniformResourceIdentifier [6] IMPLICIT IA5String
_DNS = 0x82  # GeneralName dNSName [2] IMPLICIT IA5String


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def tlv(tag: int, body: bytes) -> bytes:
    return bytes((tag,)) + _length(len(body)) + body


def der_integer(value: int) -> bytes:
    """A non-negative INTEGER, with the leading zero byte when its top bit is set."""
    return tlv(_INTEGER, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def der_oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    body = bytearray((40 * arcs[0] + arcs[1],))
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body.extend(reversed(chunk))
    return tlv(_OID, bytes(body))


# Every leaf signed within one second has the same bounds: encode each once, not per leaf.
@functools.lru_cache(maxsize=16)
def der_time(when: dt.datetime) -> bytes:
    """UTCTime through 2049, GeneralizedTime from 2050 (RFC 5280 4.1.2.5), whole seconds."""
    when = when.astimezone(dt.UTC)
    if 1950 <= when.year < 2050:
        return tlv(_UTC_TIME, when.strftime("%y%m%d%H%M%SZ").encode())
    return tlv(_GENERALIZED_TIME, when.strftime("%Y%m%d%H%M%SZ").encode())


def der_extension(value: x509.ExtensionType, *, critical: bool) -> bytes:
    body = der_oid(value.oid.dotted_string)
    if critical:
        body += _BOOLEAN_TRUE
    return tlv(_SEQUENCE, body + tlv(_OCTET_STRING, value.public_bytes()))


def _san(uri: str, dns_names: Sequence[str]) -> bytes:
    names = tlv(_URI, uri.encode("ascii"))
    for name in dns_names:
        names += tlv(_DNS, name.encode("ascii"))
    value = tlv(_SEQUENCE, names)
    # Critical: the subject is empty, so the identity lives in the SAN (RFC 5280 4.2.1.6).
    return tlv(_SEQUENCE, _SAN_HEAD + tlv(_OCTET_STRING, value))


_SAN_HEAD = der_oid("2.5.29.17") + _BOOLEAN_TRUE


def _signature_algorithm(
    key: CertificateIssuerPrivateKeyTypes,
) -> tuple[bytes, hashes.HashAlgorithm]:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.key_size > 256:
            return tlv(_SEQUENCE, der_oid("1.2.840.10045.4.3.3")), hashes.SHA384()
        return tlv(_SEQUENCE, der_oid("1.2.840.10045.4.3.2")), hashes.SHA256()
    if isinstance(key, rsa.RSAPrivateKey):
        return tlv(_SEQUENCE, der_oid("1.2.840.113549.1.1.11") + _NULL), hashes.SHA256()
    raise TypeError(f"signing key type {type(key).__name__} is not EC or RSA")


@dataclass(frozen=True)
class LeafDer:
    """The parts every leaf of one signer shares, encoded; `sign` places the rest."""

    key: CertificateIssuerPrivateKeyTypes
    hash: hashes.HashAlgorithm
    algorithm: bytes  # AlgorithmIdentifier, in the TBSCertificate and after it
    issuer: bytes  # the signer's subject Name
    head_ec: bytes  # basic constraints, key usage, extended key usage, for EC subject keys
    head_rsa: bytes  # the same with keyEncipherment, for RSA subject keys
    aki: bytes  # authority key identifier
    ecdsa: ec.ECDSA  # the signature scheme object, made once

    @classmethod
    def of(
        cls,
        key: CertificateIssuerPrivateKeyTypes,
        issuer: x509.Name,
        head_ec: Sequence[tuple[x509.ExtensionType, bool]],
        head_rsa: Sequence[tuple[x509.ExtensionType, bool]],
        aki: x509.AuthorityKeyIdentifier,
    ) -> LeafDer:
        algorithm, digest = _signature_algorithm(key)
        return cls(
            key=key,
            hash=digest,
            algorithm=algorithm,
            issuer=issuer.public_bytes(),
            head_ec=b"".join(der_extension(v, critical=c) for v, c in head_ec),
            head_rsa=b"".join(der_extension(v, critical=c) for v, c in head_rsa),
            aki=der_extension(aki, critical=False),
            ecdsa=ec.ECDSA(digest),
        )

    def tbs(
        self,
        spki: bytes,
        rsa_subject: bool,
        uri: str,
        dns_names: Sequence[str],
        serial: int,
        not_before: dt.datetime,
        not_after: dt.datetime,
    ) -> bytes:
        """The TBSCertificate: empty subject, `uri` (then `dns_names`) as the SAN."""
        head = self.head_rsa if rsa_subject else self.head_ec
        extensions = tlv(0xA3, tlv(_SEQUENCE, head + _san(uri, dns_names) + self.aki))
        return tlv(
            _SEQUENCE,
            _VERSION_3
            + der_integer(serial)
            + self.algorithm
            + self.issuer
            + tlv(_SEQUENCE, der_time(not_before) + der_time(not_after))
            + _EMPTY_NAME
            + spki
            + extensions,
        )

    def sign(self, tbs: bytes) -> bytes:
        """The Certificate: TBSCertificate, algorithm, signature."""
        if isinstance(self.key, ec.EllipticCurvePrivateKey):
            signature = self.key.sign(tbs, self.ecdsa)
        elif isinstance(self.key, rsa.RSAPrivateKey):
            signature = self.key.sign(tbs, padding.PKCS1v15(), self.hash)
        else:  # pragma: no cover - `of` accepts EC and RSA keys only
            raise TypeError("signing key is not EC or RSA")
        return tlv(_SEQUENCE, tbs + self.algorithm + tlv(0x03, b"\x00" + signature))


def spki_der(public_key: object) -> bytes:
    assert isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
