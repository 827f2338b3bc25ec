"""Root rotation with no outage (self-signed mode), as a pure schedule: `now` is passed in.

`meshward ca rotate-root` makes a new root and records a `RootRotation`; from then on:
1. prepared  (started .. switch_at): the new root is in the trust bundle beside the old one, so
   every agent and sidecar learns it; the CA still signs with the old key.
2. switched  (switch_at .. retire_at): the CA signs with the new key; the old root stays in the
   bundle, because certificates it signed are still valid.
3. done      (retire_at ..): the last certificate the old key signed has expired (it was signed
   before switch_at, for at most max-ttl): the old root leaves the bundle.
The grace period (prepared) must outlast the time the bundle takes to reach everyone: the
discovery stream and the Workload API carry it within seconds; the default is an hour.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from ca.issuer import SigningAuthority
from meshward_common.errors import ConfigError

Phase = Literal["prepared", "switched", "done"]
DEFAULT_GRACE = dt.timedelta(hours=1)
# Workers see a new signer within a poll of the publisher and one of their own (well under a
# second); a worker may sign with the old key until then.
SWITCH_PROPAGATION = dt.timedelta(seconds=5)
ROTATION = "root_rotation"  # its row in ca.store's published table


@dataclass(frozen=True)
class RootRotation:
    old_cert: x509.Certificate
    old_key: CertificateIssuerPrivateKeyTypes
    new_cert: x509.Certificate
    new_key: CertificateIssuerPrivateKeyTypes
    started: dt.datetime
    grace: dt.timedelta

    @property
    def switch_at(self) -> dt.datetime:
        return self.started + self.grace

    def retire_at(self, max_ttl: dt.timedelta) -> dt.datetime:
        # Signed before the workers saw the switch, for at most max_ttl: all expired by then.
        return self.switch_at + SWITCH_PROPAGATION + max_ttl

    def phase(self, now: dt.datetime, max_ttl: dt.timedelta) -> Phase:
        if now < self.switch_at:
            return "prepared"
        if now < self.retire_at(max_ttl):
            return "switched"
        return "done"

    def authority(self, now: dt.datetime, max_ttl: dt.timedelta) -> SigningAuthority:
        """Who signs and which roots are in the bundle at `now`."""
        phase = self.phase(now, max_ttl)
        if phase == "prepared":
            return SigningAuthority(self.old_cert, self.old_key, (), (self.old_cert, self.new_cert))
        if phase == "switched":
            return SigningAuthority(self.new_cert, self.new_key, (), (self.old_cert, self.new_cert))
        return SigningAuthority(self.new_cert, self.new_key, (), (self.new_cert,))

    def earlier_chains(
        self, now: dt.datetime, max_ttl: dt.timedelta
    ) -> tuple[tuple[x509.Certificate, ...], ...]:
        """Signing chains whose certificates may still be presented (the old root's, until done)."""
        return ((self.old_cert,),) if self.phase(now, max_ttl) != "done" else ()


def _key_pem(key: CertificateIssuerPrivateKeyTypes) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def encode_rotation(rotation: RootRotation) -> bytes:
    return json.dumps(
        {
            "old_cert": _cert_pem(rotation.old_cert),
            "old_key": _key_pem(rotation.old_key),
            "new_cert": _cert_pem(rotation.new_cert),
            "new_key": _key_pem(rotation.new_key),
            "started": rotation.started.isoformat(),
            "grace_seconds": rotation.grace.total_seconds(),
        },
        sort_keys=True,
    ).encode()


def _load_key(pem: str) -> CertificateIssuerPrivateKeyTypes:
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ConfigError("root rotation: a key is not EC or RSA")
    return key


def decode_rotation(data: bytes) -> RootRotation:
    try:
        doc = json.loads(data)
        return RootRotation(
            x509.load_pem_x509_certificate(doc["old_cert"].encode()),
            _load_key(doc["old_key"]),
            x509.load_pem_x509_certificate(doc["new_cert"].encode()),
            _load_key(doc["new_key"]),
            dt.datetime.fromisoformat(doc["started"]),
            dt.timedelta(seconds=float(doc["grace_seconds"])),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"the recorded root rotation is unreadable: {exc}") from exc
