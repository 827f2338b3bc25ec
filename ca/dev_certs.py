"""Development certificates in the layout of Istio's `tools/certs` (`make ... root-ca` then
`make ... <cluster>-cacerts`):

    certs-dev/root-cert.pem, root-key.pem            the dev root (ECDSA P-256, 10 years)
    certs-dev/<cluster>/ca-cert.pem, ca-key.pem      an intermediate signed by that root
    certs-dev/<cluster>/root-cert.pem                copy of the root
    certs-dev/<cluster>/cert-chain.pem               ca-cert.pem + root-cert.pem

`<cluster>/` is a plug-in CA directory: `meshward ca serve --plugin-ca-dir certs-dev/cluster1`.
Keys are written 0600 and git-ignored. An existing root is reused, so several clusters share it.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ca.authority import (
    cert_pem,
    key_pem,
    make_intermediate,
    make_root,
    write_private,
    write_public,
)
from meshward_common.errors import ConfigError
from meshward_common.spiffe_id import validate_name


def write_dev_certs(out: Path, trust_domain: str, cluster: str, now: dt.datetime) -> list[Path]:
    """Write (or reuse) the dev root and a fresh intermediate for `cluster`; returns files written."""
    validate_name("cluster name", cluster)
    out.mkdir(parents=True, exist_ok=True)
    root_cert_path, root_key_path = out / "root-cert.pem", out / "root-key.pem"
    written: list[Path] = []
    if root_cert_path.exists() and root_key_path.exists():
        root = x509.load_pem_x509_certificate(root_cert_path.read_bytes())
        key = serialization.load_pem_private_key(root_key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise ConfigError(f"{root_key_path}: not an EC or RSA key")
        root_key = key
    else:
        root, new_key = make_root(trust_domain, now, "meshward dev root CA")
        root_key = new_key
        write_private(root_key_path, key_pem(root_key))
        write_public(root_cert_path, cert_pem(root))
        written += [root_cert_path, root_key_path]
    inter, inter_key = make_intermediate(
        root, root_key, trust_domain, now, f"meshward dev intermediate CA {cluster}"
    )
    cluster_dir = out / cluster
    cluster_dir.mkdir(exist_ok=True)
    files = {
        "ca-cert.pem": cert_pem(inter),
        "root-cert.pem": cert_pem(root),
        "cert-chain.pem": cert_pem(inter, root),
    }
    write_private(cluster_dir / "ca-key.pem", key_pem(inter_key))
    written.append(cluster_dir / "ca-key.pem")
    for name, data in files.items():
        write_public(cluster_dir / name, data)
        written.append(cluster_dir / name)
    return written
