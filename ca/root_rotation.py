"""`meshward ca rotate-root`: make the new root and record the rotation for the running CA.

The CLI writes only the record (new root and key, start, grace) into the state database; the
supervisor's publisher follows its schedule (`ca.rotation`), so every worker, agent and sidecar
sees each step without a restart.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509

from ca.authority import ROOT_CERT, ROOT_KEY, load_root, make_root
from ca.issuer import SigningAuthority
from ca.rotation import ROTATION, RootRotation, encode_rotation
from ca.store import CaStore
from meshward_common.errors import ConfigError, SpiffeIdError
from meshward_common.spiffe_id import SpiffeId
from meshward_common.svid import fingerprint_sha256, uri_sans


def _trust_domain_of(root: x509.Certificate, path: Path) -> str:
    for uri in uri_sans(root):
        try:
            return SpiffeId.parse(uri).trust_domain
        except SpiffeIdError:
            continue
    raise ConfigError(f"{path}: the root names no SPIFFE trust domain")


def start_rotation(state_dir: Path, grace: dt.timedelta, now: dt.datetime) -> str:
    cert_path, key_path = state_dir / ROOT_CERT, state_dir / ROOT_KEY
    if not key_path.is_file():
        raise ConfigError(
            f"{state_dir}: no self-signed root here (with a plug-in CA, rotate by replacing the "
            "plug-in files: the CA follows them)"
        )
    store = CaStore(state_dir)
    try:
        if store.published(ROTATION) is not None:
            raise ConfigError("a root rotation is already in progress; see ca-status.json")
        old = load_root(state_dir)
        new_cert, new_key = make_root(_trust_domain_of(old.cert, cert_path), now)
        new = SigningAuthority(new_cert, new_key, (), (new_cert,))
        rotation = RootRotation(old, new, now, grace)
        store.publish(ROTATION, fingerprint_sha256(new_cert)[:16], encode_rotation(rotation))
    finally:
        store.close()
    return (
        f"root rotation started: new root {fingerprint_sha256(new_cert)[:16]} is trusted now, "
        f"signs from {rotation.switch_at.isoformat()}; the old root leaves the bundle once the "
        "last certificate it signed has expired (see ca-status.json)"
    )
