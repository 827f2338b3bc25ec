"""A small test CA issuing SPIFFE-conformant certificates, for the agent's tests without a control plane."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from meshward_common.spiffe_id import SpiffeId
from tests.harness.pki import ca_cert, svid_leaf


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
        self.root = ca_cert(
            self.key,
            self.name,
            self.trust_domain,
            now - dt.timedelta(minutes=5),
            now + dt.timedelta(days=1),
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
        leaf = svid_leaf(
            self.root,
            self.key,
            public_key,
            [str(spiffe_id)],
            now - dt.timedelta(seconds=1),
            min(now + ttl, self.root.not_valid_after_utc),
            dns=dns,
        )
        return [leaf, self.root]

    def issue_for_csr(
        self, csr_pem: str, spiffe_id: SpiffeId, ttl: dt.timedelta
    ) -> list[x509.Certificate]:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
        key = csr.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        return self.issue(key, spiffe_id, ttl)
