"""The CA's key material: a self-signed root it creates on first start, or Istio's plug-in CA files.

State dir (0700): `root-cert.pem` + `root-key.pem` (0600) when self-signed; always `trust-bundle.pem`
(every root, the file node agents bootstrap with). Plug-in layout (Istio's `cacerts` secret):
`ca-cert.pem` (signing certificate), `ca-key.pem`, `root-cert.pem`, `cert-chain.pem` (ca-cert up to
the root).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID

from ca.issuer import SigningAuthority
from meshward_common.errors import ConfigError
from meshward_common.spiffe_id import SpiffeId
from meshward_common.svid import signing_cert_problems

log = logging.getLogger(__name__)

ROOT_TTL = dt.timedelta(days=3650)
INTERMEDIATE_TTL = dt.timedelta(days=730)
ROOT_CERT = "root-cert.pem"
ROOT_KEY = "root-key.pem"
TRUST_BUNDLE = "trust-bundle.pem"
PLUGIN_FILES = ("ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem")


def _ca_extensions(
    builder: x509.CertificateBuilder,
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    issuer_public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    trust_domain: str,
    path_length: int | None,
) -> x509.CertificateBuilder:
    return (
        builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=path_length), critical=True
        )
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public_key), critical=False
        )
        # A signing certificate may carry the trust domain's SPIFFE ID (no path).
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(str(SpiffeId(trust_domain, "")))]
            ),
            critical=False,
        )
    )


def make_root(
    trust_domain: str, now: dt.datetime, common_name: str = "meshward root CA"
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed ECDSA P-256 root valid for 10 years."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"meshward {trust_domain}"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + ROOT_TTL)
    )
    builder = _ca_extensions(builder, key.public_key(), key.public_key(), trust_domain, None)
    return builder.sign(key, hashes.SHA256()), key


def make_intermediate(
    root: x509.Certificate,
    root_key: CertificateIssuerPrivateKeyTypes,
    trust_domain: str,
    now: dt.datetime,
    common_name: str = "meshward intermediate CA",
    ttl: dt.timedelta = INTERMEDIATE_TTL,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    issuer_pub = root.public_key()
    if not isinstance(issuer_pub, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise ConfigError("root key type is not EC or RSA")
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"meshward {trust_domain}"),
                    x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                ]
            )
        )
        .issuer_name(root.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + ttl, root.not_valid_after_utc))
    )
    builder = _ca_extensions(builder, key.public_key(), issuer_pub, trust_domain, 0)
    return builder.sign(root_key, hashes.SHA256()), key


def key_pem(key: CertificateIssuerPrivateKeyTypes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def write_private(path: Path, data: bytes) -> None:
    """Write a secret 0600 from the first byte (never world-readable, even briefly)."""
    tmp = path.with_name(f".{path.name}.tmp")
    # A fresh file of our own (O_EXCL never follows a symlink someone left in a shared directory).
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_public(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def ensure_state_dir(state_dir: Path) -> None:
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(state_dir, 0o700)


def _read_certs(path: Path) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except ValueError as exc:
        raise ConfigError(f"{path}: not PEM certificates: {exc}") from exc
    if not certs:
        raise ConfigError(f"{path}: no certificates found")
    return certs


def _read_key(path: Path) -> CertificateIssuerPrivateKeyTypes:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: not an unencrypted PEM private key") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ConfigError(f"{path}: key must be EC or RSA, not {type(key).__name__}")
    return key


def _public_der(key: object) -> bytes:
    assert isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_plugin_ca(plugin_dir: Path, now: dt.datetime) -> SigningAuthority:
    """Load Istio's plug-in CA files; an incomplete or inconsistent set is a ConfigError."""
    missing = [name for name in PLUGIN_FILES if not (plugin_dir / name).is_file()]
    if missing:
        raise ConfigError(
            f"{plugin_dir}: incomplete plug-in CA, missing {', '.join(missing)} "
            f"(need all of {', '.join(PLUGIN_FILES)})"
        )
    ca_cert = _read_certs(plugin_dir / "ca-cert.pem")[0]
    ca_key = _read_key(plugin_dir / "ca-key.pem")
    roots = _read_certs(plugin_dir / "root-cert.pem")
    chain = _read_certs(plugin_dir / "cert-chain.pem")
    if _public_der(ca_key.public_key()) != _public_der(ca_cert.public_key()):
        raise ConfigError(f"{plugin_dir}: ca-key.pem does not match ca-cert.pem")
    problems = signing_cert_problems(ca_cert)
    if problems:
        raise ConfigError(
            f"{plugin_dir}/ca-cert.pem: not a signing certificate: {'; '.join(problems)}"
        )
    ku = ca_cert.extensions.get_extension_for_class(x509.KeyUsage).value
    if ku.digital_signature:
        # Istio's own tools/certs sets it on intermediates, so accept it, but say so: meshward's
        # signing certificates carry keyCertSign (and cRLSign) only.
        log.warning("%s/ca-cert.pem: signing certificate also allows digitalSignature", plugin_dir)
    if now > ca_cert.not_valid_after_utc:
        raise ConfigError(f"{plugin_dir}/ca-cert.pem: expired at {ca_cert.not_valid_after_utc}")
    # Istio's cert-chain.pem starts with ca-cert.pem; accept it with or without it.
    parents = [c for c in chain if c != ca_cert]
    if not parents:
        if ca_cert not in roots:
            raise ConfigError(f"{plugin_dir}/cert-chain.pem: no path from ca-cert.pem to a root")
    else:
        if parents[-1] not in roots:
            raise ConfigError(
                f"{plugin_dir}/cert-chain.pem: last certificate is not in root-cert.pem"
            )
        child = ca_cert
        for parent in parents:
            try:
                child.verify_directly_issued_by(parent)
            except (ValueError, TypeError, InvalidSignature) as exc:
                raise ConfigError(
                    f"{plugin_dir}/cert-chain.pem: {parent.subject.rfc4514_string()} did not "
                    f"issue {child.subject.rfc4514_string()}: {exc}"
                ) from exc
            child = parent
    return SigningAuthority(ca_cert, ca_key, tuple(parents), tuple(roots))


def load_or_create_root(state_dir: Path, trust_domain: str, now: dt.datetime) -> SigningAuthority:
    """The self-signed root in `state_dir`, created (key 0600) on first start."""
    cert_path, key_path = state_dir / ROOT_CERT, state_dir / ROOT_KEY
    if cert_path.exists() != key_path.exists():
        present = cert_path if cert_path.exists() else key_path
        raise ConfigError(
            f"{state_dir}: found {present.name} without its pair; restore or remove it"
        )
    if not cert_path.exists():
        cert, key = make_root(trust_domain, now)
        write_private(key_path, key_pem(key))
        write_public(cert_path, cert_pem(cert))
    return load_root(state_dir)


def load_root(state_dir: Path) -> SigningAuthority:
    """The existing self-signed root pair in `state_dir`, checked."""
    cert_path, key_path = state_dir / ROOT_CERT, state_dir / ROOT_KEY
    root = _read_certs(cert_path)[0]
    root_key = _read_key(key_path)
    if _public_der(root_key.public_key()) != _public_der(root.public_key()):
        raise ConfigError(f"{key_path}: does not match {cert_path.name}")
    if os.stat(key_path).st_mode & 0o077:
        raise ConfigError(f"{key_path}: private key is readable by others; chmod 600 it")
    return SigningAuthority(root, root_key, (), (root,))


def load_authority(
    state_dir: Path, plugin_dir: Path | None, trust_domain: str, now: dt.datetime
) -> SigningAuthority:
    """Load (or create) the signing authority and write the trust bundle into the state dir."""
    ensure_state_dir(state_dir)
    if plugin_dir is not None:
        authority = load_plugin_ca(plugin_dir, now)
    else:
        authority = load_or_create_root(state_dir, trust_domain, now)
    write_public(state_dir / TRUST_BUNDLE, cert_pem(*authority.roots))
    return authority
