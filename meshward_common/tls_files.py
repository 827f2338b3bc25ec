"""Key material into an `ssl.SSLContext`, which reads a private key only from a file.

The key is written 0600 into a fresh 0700 directory on tmpfs when there is one (so it never
reaches a disk), loaded, and the directory removed at once: no other user can read it, and
nothing stays behind when the process dies between the two steps other than in memory.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from pathlib import Path

_TMPFS = Path("/dev/shm")  # noqa: S108 - a private 0700 directory is made inside it


def load_cert_chain_pem(ctx: ssl.SSLContext, chain_pem: bytes, key_pem: bytes) -> None:
    """`ctx.load_cert_chain` from PEM bytes: the chain (leaf first) and its private key."""
    base = str(_TMPFS) if _TMPFS.is_dir() else None
    with tempfile.TemporaryDirectory(prefix="meshward-key-", dir=base) as tmp:
        os.chmod(tmp, 0o700)
        chain_path, key_path = os.path.join(tmp, "chain.pem"), os.path.join(tmp, "key.pem")
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key_pem)
        with open(chain_path, "wb") as fh:
            fh.write(chain_pem)
        ctx.load_cert_chain(chain_path, key_path)
