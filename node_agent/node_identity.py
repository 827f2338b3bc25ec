"""The node's own identity on disk: `<state-dir>/node-key.pem` and `node-cert.pem` (both 0600).

The key is generated once, on first start, and never leaves the state directory; the certificate
(chain, leaf first) comes from bootstrap with a join token and is then renewed over mTLS. The trust
bundle learned from the CA is kept beside them (`bundle.pem`) so a restarted agent trusts a rotated
root without its bootstrap file being updated.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshward_common.errors import ConfigError, SvidError
from meshward_common.spiffe_id import SpiffeId, node_id
from meshward_common.svid import load_pem_chain, pem_of, spiffe_id_of
from node_agent.join_token import how_to_bootstrap

KEY_FILE = "node-key.pem"
CERT_FILE = "node-cert.pem"
BUNDLE_FILE = "bundle.pem"


@dataclass(frozen=True)
class NodeSvid:
    chain: tuple[x509.Certificate, ...]  # leaf first, without the root
    key: ec.EllipticCurvePrivateKey

    @property
    def spiffe_id(self) -> SpiffeId:
        return spiffe_id_of(self.chain[0])

    @property
    def not_before(self) -> dt.datetime:
        return self.chain[0].not_valid_before_utc

    @property
    def not_after(self) -> dt.datetime:
        return self.chain[0].not_valid_after_utc

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def chain_pem(self) -> bytes:
        return pem_of(self.chain)


def check_state_dir(state_dir: Path) -> None:
    """Create the state directory (0700) or refuse one we cannot use, in one line."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise ConfigError(f"state dir {state_dir}: cannot create: {exc.strerror}") from exc
    if not state_dir.is_dir():
        raise ConfigError(f"state dir {state_dir} is not a directory")
    if not os.access(state_dir, os.R_OK | os.W_OK | os.X_OK):
        raise ConfigError(f"state dir {state_dir} is not readable and writable by this user")


def write_private(path: Path, data: bytes) -> None:
    """Write atomically with mode 0600 from the first byte (never briefly world-readable)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def load_or_create_key(state_dir: Path) -> ec.EllipticCurvePrivateKey:
    path = state_dir / KEY_FILE
    if path.exists():
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: unreadable node key: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"{path}: node key is not an EC key")
        return key
    key = ec.generate_private_key(ec.SECP256R1())
    write_private(
        path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    return key


def load_node_svid(state_dir: Path, key: ec.EllipticCurvePrivateKey) -> NodeSvid | None:
    path = state_dir / CERT_FILE
    if not path.exists():
        return None
    try:
        chain = load_pem_chain(path.read_bytes())
    except (OSError, ValueError, SvidError) as exc:
        raise ConfigError(f"{path}: unreadable node certificate: {exc}") from exc
    if chain[0].public_key() != key.public_key():
        raise ConfigError(f"{path}: node certificate does not match {state_dir / KEY_FILE}")
    return NodeSvid(tuple(chain), key)


def save_node_svid(state_dir: Path, svid: NodeSvid) -> None:
    write_private(state_dir / CERT_FILE, svid.chain_pem())


def load_bundle(path: Path) -> list[x509.Certificate]:
    try:
        return load_pem_chain(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"trust bundle {path}: cannot read: {exc.strerror}") from exc
    except (ValueError, SvidError) as exc:
        raise ConfigError(f"trust bundle {path}: no PEM certificates: {exc}") from exc


def save_bundle(state_dir: Path, roots: list[x509.Certificate]) -> None:
    write_private(state_dir / BUNDLE_FILE, pem_of(roots))


def check_node_svid(svid: NodeSvid, node: str, now: dt.datetime, state_dir: Path) -> None:
    """Refuse a node SVID for another node, or one that expired while the agent was down."""
    sid = svid.spiffe_id
    if sid != node_id(sid.trust_domain, node):
        raise ConfigError(
            f"{state_dir / CERT_FILE} is for {sid}, not node {node!r}; use another --state-dir"
        )
    if now >= svid.not_after:
        raise ConfigError(
            f"node SVID in {state_dir} expired at {svid.not_after.isoformat()} (agent down too "
            f"long); re-bootstrap: {how_to_bootstrap(node)}"
        )
