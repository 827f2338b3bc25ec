"""Key material: the self-signed root on first start, Istio's plug-in CA files, dev certificates."""

from __future__ import annotations

import datetime as dt
import os
import re
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from ca.authority import PLUGIN_FILES, TRUST_BUNDLE, load_authority, make_root
from ca.dev_certs import write_dev_certs
from ca.issuer import issue_svid
from meshward_common.errors import ConfigError
from meshward_common.spiffe_id import workload_id
from meshward_common.svid import signing_cert_problems, verify_x509_svid
from tests.ca.conftest import NOW, TD


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_first_start_creates_a_p256_ten_year_root_with_a_0600_key(tmp_path: Path) -> None:
    state = tmp_path / "state"
    authority = load_authority(state, None, TD, NOW)
    assert mode(state) == 0o700
    assert mode(state / "root-key.pem") == 0o600
    root = x509.load_pem_x509_certificate((state / "root-cert.pem").read_bytes())
    assert root == authority.cert
    assert authority.roots == (root,)
    key = root.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert key.curve.name == "secp256r1"
    assert root.not_valid_after_utc - NOW == dt.timedelta(days=3650)
    assert signing_cert_problems(root) == []
    ku = root.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical
    assert ku.value.key_cert_sign
    assert not ku.value.digital_signature, "signing certificates never sign data"
    assert x509.load_pem_x509_certificates((state / TRUST_BUNDLE).read_bytes()) == [root]


def test_restart_reuses_the_same_root(tmp_path: Path) -> None:
    first = load_authority(tmp_path, None, TD, NOW)
    second = load_authority(tmp_path, None, TD, NOW + dt.timedelta(days=1))
    assert first.cert == second.cert


def test_half_a_root_pair_or_a_readable_key_is_a_startup_error(tmp_path: Path) -> None:
    load_authority(tmp_path, None, TD, NOW)
    os.chmod(tmp_path / "root-key.pem", 0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        load_authority(tmp_path, None, TD, NOW)
    (tmp_path / "root-key.pem").unlink()
    with pytest.raises(ConfigError, match=re.escape("root-cert.pem without its pair")):
        load_authority(tmp_path, None, TD, NOW)


@pytest.fixture
def dev_certs(tmp_path: Path) -> Path:
    write_dev_certs(tmp_path / "certs-dev", TD, "cluster1", NOW)
    return tmp_path / "certs-dev"


def test_dev_certs_use_istios_layout_with_private_keys_0600(dev_certs: Path) -> None:
    assert mode(dev_certs / "root-key.pem") == 0o600
    cluster = dev_certs / "cluster1"
    assert sorted(p.name for p in cluster.iterdir()) == sorted(PLUGIN_FILES)
    assert mode(cluster / "ca-key.pem") == 0o600
    chain = x509.load_pem_x509_certificates((cluster / "cert-chain.pem").read_bytes())
    ca_cert = x509.load_pem_x509_certificate((cluster / "ca-cert.pem").read_bytes())
    root = x509.load_pem_x509_certificate((dev_certs / "root-cert.pem").read_bytes())
    assert chain == [ca_cert, root]
    ca_cert.verify_directly_issued_by(root)
    assert signing_cert_problems(ca_cert) == []
    assert not ca_cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    bc = ca_cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical
    assert bc.value.path_length == 0


def test_dev_certs_reuse_the_root_for_a_second_cluster(dev_certs: Path) -> None:
    root_before = (dev_certs / "root-cert.pem").read_bytes()
    write_dev_certs(dev_certs, TD, "cluster2", NOW)
    assert (dev_certs / "root-cert.pem").read_bytes() == root_before
    assert (dev_certs / "cluster2" / "root-cert.pem").read_bytes() == root_before


def test_plugin_ca_signs_as_an_intermediate_and_serves_the_full_chain(
    tmp_path: Path, dev_certs: Path
) -> None:
    state = tmp_path / "state"
    authority = load_authority(state, dev_certs / "cluster1", TD, NOW)
    assert not (state / "root-key.pem").exists(), "no self-signed root when plugged in"
    root = x509.load_pem_x509_certificate((dev_certs / "root-cert.pem").read_bytes())
    assert x509.load_pem_x509_certificates((state / TRUST_BUNDLE).read_bytes()) == [root]
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    wid = workload_id(TD, "default", "reviews")
    chain = issue_svid(authority, key, wid, dt.timedelta(hours=1), NOW)
    assert [c.subject for c in chain[1:]] == [authority.cert.subject, root.subject]
    assert verify_x509_svid(chain, [root], NOW) == wid


@pytest.mark.parametrize("missing", PLUGIN_FILES)
def test_incomplete_plugin_set_is_a_clear_startup_error(
    tmp_path: Path, dev_certs: Path, missing: str
) -> None:
    (dev_certs / "cluster1" / missing).unlink()
    with pytest.raises(ConfigError, match=re.escape(f"incomplete plug-in CA, missing {missing}")):
        load_authority(tmp_path / "state", dev_certs / "cluster1", TD, NOW)


def test_plugin_key_that_does_not_match_is_refused(tmp_path: Path, dev_certs: Path) -> None:
    write_dev_certs(dev_certs, TD, "cluster2", NOW)
    (dev_certs / "cluster1" / "ca-key.pem").write_bytes(
        (dev_certs / "cluster2" / "ca-key.pem").read_bytes()
    )
    with pytest.raises(ConfigError, match=re.escape("does not match ca-cert.pem")):
        load_authority(tmp_path / "state", dev_certs / "cluster1", TD, NOW)


def test_plugin_chain_to_a_foreign_root_is_refused(tmp_path: Path, dev_certs: Path) -> None:
    other, _ = make_root(TD, NOW)
    from ca.authority import cert_pem

    (dev_certs / "cluster1" / "root-cert.pem").write_bytes(cert_pem(other))
    with pytest.raises(ConfigError, match=re.escape("not in root-cert.pem")):
        load_authority(tmp_path / "state", dev_certs / "cluster1", TD, NOW)


def test_plugin_file_that_is_not_pem_is_refused(tmp_path: Path, dev_certs: Path) -> None:
    (dev_certs / "cluster1" / "ca-cert.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match=re.escape("ca-cert.pem")):
        load_authority(tmp_path / "state", dev_certs / "cluster1", TD, NOW)


ISTIO_REQ = """[ req ]
encrypt_key = no
prompt = no
utf8 = yes
default_md = sha256
default_bits = 2048
req_extensions = req_ext
x509_extensions = req_ext
distinguished_name = req_dn
[ req_ext ]
subjectKeyIdentifier = hash
keyUsage = critical, digitalSignature, nonRepudiation, keyEncipherment, keyCertSign
"""
ISTIO_ROOT_CONF = (
    ISTIO_REQ + "basicConstraints = critical, CA:true\n[ req_dn ]\nO = Istio\nCN = Root CA\n"
)
ISTIO_INTERMEDIATE_CONF = (
    ISTIO_REQ
    + "basicConstraints = critical, CA:true, pathlen:0\nsubjectAltName=@san\n"
    + "[ san ]\nDNS.1 = istiod.istio-system.svc\n"
    + "[ req_dn ]\nO = Istio\nCN = Intermediate CA\nL = cluster1\n"
)


def istio_tools_certs(out: Path) -> Path:
    """The plug-in files as Istio's tools/certs Makefile.selfsigned.mk makes them with openssl
    (RSA; 2048 bits here for speed, Istio's default is 4096)."""
    import subprocess

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=out, check=True, capture_output=True)

    out.mkdir()
    (out / "root-ca.conf").write_text(ISTIO_ROOT_CONF)
    (out / "intermediate.conf").write_text(ISTIO_INTERMEDIATE_CONF)
    run("genrsa", "-out", "root-key.pem", "2048")
    run("req", "-new", "-key", "root-key.pem", "-config", "root-ca.conf", "-out", "root-cert.csr")
    run("x509", "-req", "-sha256", "-days", "3650", "-signkey", "root-key.pem",
        "-extensions", "req_ext", "-extfile", "root-ca.conf", "-in", "root-cert.csr",
        "-out", "root-cert.pem")  # fmt: skip
    (out / "cluster1").mkdir()
    run("genrsa", "-out", "cluster1/ca-key.pem", "2048")
    run("req", "-new", "-config", "intermediate.conf", "-key", "cluster1/ca-key.pem",
        "-out", "cluster1/cluster-ca.csr")  # fmt: skip
    run("x509", "-req", "-days", "730", "-CA", "root-cert.pem", "-CAkey", "root-key.pem",
        "-CAcreateserial", "-extensions", "req_ext", "-extfile", "intermediate.conf",
        "-in", "cluster1/cluster-ca.csr", "-out", "cluster1/ca-cert.pem")  # fmt: skip
    root = (out / "root-cert.pem").read_bytes()
    (out / "cluster1" / "root-cert.pem").write_bytes(root)
    (out / "cluster1" / "cert-chain.pem").write_bytes(
        (out / "cluster1/ca-cert.pem").read_bytes() + root
    )
    (out / "cluster1" / "cluster-ca.csr").unlink()
    return out / "cluster1"


def test_plugin_files_made_by_istios_tools_certs_work(tmp_path: Path) -> None:
    plugin = istio_tools_certs(tmp_path / "istio-certs")
    now = dt.datetime.now(dt.UTC)
    authority = load_authority(tmp_path / "state", plugin, TD, now)
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    wid = workload_id(TD, "default", "reviews")
    chain = issue_svid(authority, key, wid, dt.timedelta(hours=1), now)
    assert len(chain) == 3
    assert verify_x509_svid(chain, authority.roots, now) == wid
