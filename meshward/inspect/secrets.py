"""What `meshward proxy-config secret` shows: a sidecar's SVID, its chain and trust bundle.

Pure: certificates and `now` in, a view (table rows or JSON) out. The sidecar's `/certs` answer is
read leniently: its PEM blocks are found wherever they are, and the leaf is the certificate that is
not a CA, so the view does not depend on the exact JSON layout.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from meshward_common.errors import SvidError
from meshward_common.svid import fingerprint_sha256, uri_sans, verify_x509_svid

_PEM_RE = re.compile(r"-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----")
_BUNDLE_KEYS = ("bundle", "trust_bundle", "ca_cert", "roots", "root", "trust")


@dataclass(frozen=True)
class CertInfo:
    subject: str
    issuer: str
    spiffe_id: str
    serial: str
    not_before: dt.datetime
    not_after: dt.datetime
    is_ca: bool
    fingerprint: str

    def as_json(self, now: dt.datetime) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "issuer": self.issuer,
            "spiffeId": self.spiffe_id,
            "serialNumber": self.serial,
            "validFrom": self.not_before.isoformat(),
            "expirationTime": self.not_after.isoformat(),
            "secondsUntilExpiration": int((self.not_after - now).total_seconds()),
            "isCA": self.is_ca,
            "sha256": self.fingerprint,
        }


def cert_info(cert: x509.Certificate) -> CertInfo:
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    uris = uri_sans(cert)
    return CertInfo(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        spiffe_id=uris[0] if uris else "",
        serial=format(cert.serial_number, "x"),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        is_ca=is_ca,
        fingerprint=fingerprint_sha256(cert),
    )


@dataclass(frozen=True)
class SecretView:
    pod: str
    chain: tuple[x509.Certificate, ...]  # leaf first
    bundle: tuple[x509.Certificate, ...]
    problems: tuple[str, ...]  # empty: the chain verifies against the bundle at `now`
    now: dt.datetime

    @property
    def leaf(self) -> CertInfo:
        return cert_info(self.chain[0])

    def as_json(self) -> dict[str, Any]:
        leaf = self.leaf
        return {
            "pod": self.pod,
            "spiffeId": leaf.spiffe_id,
            "serialNumber": leaf.serial,
            "validFrom": leaf.not_before.isoformat(),
            "expirationTime": leaf.not_after.isoformat(),
            "secondsUntilExpiration": int((leaf.not_after - self.now).total_seconds()),
            "valid": not self.problems,
            "problems": list(self.problems),
            "certChain": [cert_info(c).as_json(self.now) for c in self.chain],
            "trustBundle": [cert_info(c).as_json(self.now) for c in self.bundle],
        }

    def table(self) -> str:
        rows = [
            (
                "RESOURCE NAME",
                "TYPE",
                "STATUS",
                "VALID CERT",
                "SERIAL NUMBER",
                "NOT AFTER",
                "NOT BEFORE",
            )
        ]
        status = "ACTIVE" if not self.problems else "INVALID"
        for i, cert in enumerate(self.chain):
            info = cert_info(cert)
            name, kind = ("default", "Cert Chain") if i == 0 else (f"default[{i}]", "Intermediate")
            rows.append(
                (
                    name,
                    kind,
                    status,
                    str(not self.problems).lower(),
                    info.serial,
                    _t(info.not_after),
                    _t(info.not_before),
                )
            )
        for cert in self.bundle:
            info = cert_info(cert)
            rows.append(
                (
                    "ROOTCA",
                    "CA",
                    "ACTIVE",
                    "true",
                    info.serial,
                    _t(info.not_after),
                    _t(info.not_before),
                )
            )
        lines = [f"SPIFFE ID: {self.leaf.spiffe_id}", format_table(rows)]
        lines += [f"problem: {p}" for p in self.problems]
        return "\n".join(lines)


def _t(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def format_table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "   ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows
    )


def pems_in(value: Any) -> list[str]:
    if isinstance(value, str):
        return _PEM_RE.findall(value)
    if isinstance(value, dict):
        return [p for v in value.values() for p in pems_in(v)]
    if isinstance(value, list):
        return [p for v in value for p in pems_in(v)]
    return []


def split_certs(answer: Any) -> tuple[list[x509.Certificate], list[x509.Certificate]]:
    """(chain leaf-first, bundle) from a sidecar's `/certs` JSON, whatever its exact layout:
    PEMs under a bundle-like key are the bundle, the rest the chain."""
    bundle_pems: list[str] = []
    chain_pems: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if any(k in str(key).lower() for k in _BUNDLE_KEYS):
                    bundle_pems.extend(pems_in(item))
                else:
                    walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        else:
            chain_pems.extend(pems_in(value))

    walk(answer)
    chain = _dedupe([x509.load_pem_x509_certificate(p.encode()) for p in chain_pems])
    bundle = _dedupe([x509.load_pem_x509_certificate(p.encode()) for p in bundle_pems])
    # Leaf first: the one certificate that is not a CA.
    chain.sort(key=lambda c: cert_info(c).is_ca)
    return chain, bundle


def _dedupe(certs: list[x509.Certificate]) -> list[x509.Certificate]:
    seen: set[bytes] = set()
    out = []
    for cert in certs:
        fp = cert.fingerprint(hashes.SHA256())
        if fp not in seen:
            seen.add(fp)
            out.append(cert)
    return out


def secret_view(
    pod: str,
    chain: Sequence[x509.Certificate],
    bundle: Sequence[x509.Certificate],
    now: dt.datetime,
) -> SecretView:
    if not chain:
        raise SvidError([f"pod {pod}: the sidecar holds no certificate"])
    try:
        verify_x509_svid(chain, bundle, now)
        problems: tuple[str, ...] = ()
    except SvidError as exc:
        problems = tuple(exc.problems)
    return SecretView(pod, tuple(chain), tuple(bundle), problems, now)
