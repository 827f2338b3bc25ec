"""A small test CA issuing SPIFFE-conformant certificates, for the agent's tests without a control plane."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshward_common.spiffe_id import SpiffeId


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class MiniCA:
    trust_domain: str = "cluster.local"
    name: str = "meshward test root"
    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    root: x509.Certificate = field(init=False)

    def __post_init__(self) -> None:
        now = _now()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.name)])
        self.root = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(f"spiffe://{self.trust_domain}")]
                ),
                critical=False,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )

    def issue(
        self,
        public_key: ec.EllipticCurvePublicKey,
        spiffe_id: SpiffeId | str,
        ttl: dt.timedelta,
        dns: tuple[str, ...] = (),
        now: dt.datetime | None = None,
    ) -> list[x509.Certificate]:
        """Leaf signed by the root; returns [leaf, root] like the CA's cert_chain."""
        now = now or _now()
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(str(spiffe_id))]
        sans += [x509.DNSName(d) for d in dns]
        not_before = now - dt.timedelta(seconds=1)
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.root.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(min(now + ttl, self.root.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=True,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        return [leaf, self.root]

    def issue_for_csr(
        self, csr_pem: str, spiffe_id: SpiffeId, ttl: dt.timedelta
    ) -> list[x509.Certificate]:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
        key = csr.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        return self.issue(key, spiffe_id, ttl)
