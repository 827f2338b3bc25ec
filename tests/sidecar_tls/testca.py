"""A small test CA for the sidecar tests: roots, intermediates and X.509-SVIDs made on the fly
(in the spirit of trustme), including the broken ones the negative tests need."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sidecar_tls.identity import WorkloadIdentity
from tests.harness.pki import ca_cert, svid_leaf


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
        cert = ca_cert(
            key, name, trust_domain, now - dt.timedelta(hours=1), now + dt.timedelta(days=1)
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
        cert = svid_leaf(
            self.cert,
            self.key,
            key.public_key(),
            [spiffe_id],
            start,
            start + ttl,
            dns=dns,
            subject=x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshward")]),
        )
        return WorkloadIdentity(chain=(cert,), key=key, bundles={self.trust_domain: (self.cert,)})

    def workload(self, namespace: str, sa: str, **kw: object) -> WorkloadIdentity:
        return self.issue(f"spiffe://{self.trust_domain}/ns/{namespace}/sa/{sa}", **kw)  # type: ignore[arg-type]


def with_bundle(identity: WorkloadIdentity, ca: MiniCA) -> WorkloadIdentity:
    """The same SVID, trusting another CA's roots instead (a peer from a foreign CA)."""
    return WorkloadIdentity(identity.chain, identity.key, {ca.trust_domain: (ca.cert,)})
