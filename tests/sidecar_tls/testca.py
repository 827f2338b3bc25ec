"""A small test CA for the sidecar tests: roots, intermediates and X.509-SVIDs made on the fly
(in the spirit of trustme), including the broken ones the negative tests need."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sidecar_tls.identity import WorkloadIdentity


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class MiniCA:
    trust_domain: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, trust_domain: str = "cluster.local", name: str = "test root") -> MiniCA:
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]
                ),
                critical=False,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return cls(trust_domain, key, cert)

    def issue(
        self,
        spiffe_id: str,
        *,
        ttl: dt.timedelta = dt.timedelta(hours=1),
        not_before: dt.datetime | None = None,
        dns: tuple[str, ...] = (),
    ) -> WorkloadIdentity:
        key = ec.generate_private_key(ec.SECP256R1())
        start = not_before or (_now() - dt.timedelta(minutes=1))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshward")]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + ttl)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, True, False, False, False, False, False, False),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.UniformResourceIdentifier(spiffe_id),
                        *(x509.DNSName(name) for name in dns),
                    ]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        return WorkloadIdentity(chain=(cert,), key=key, bundles={self.trust_domain: (self.cert,)})

    def workload(self, namespace: str, sa: str, **kw: object) -> WorkloadIdentity:
        return self.issue(f"spiffe://{self.trust_domain}/ns/{namespace}/sa/{sa}", **kw)  # type: ignore[arg-type]


def with_bundle(identity: WorkloadIdentity, ca: MiniCA) -> WorkloadIdentity:
    """The same SVID, trusting another CA's roots instead (a peer from a foreign CA)."""
    return WorkloadIdentity(identity.chain, identity.key, {ca.trust_domain: (ca.cert,)})
