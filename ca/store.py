"""The state the CA's processes share: one SQLite database in the state dir, `ca.db` (0600).

The supervisor publishes snapshots (`published`: the signing authority, the mesh state) and the
workers read them; `meshward ca join-token` adds join tokens (`join_tokens`) and the workers redeem
them. Each change is one statement, so SQLite's write lock makes it atomic across processes: a
token is redeemed by exactly one caller however many workers race for it. WAL mode: readers never
wait for the writer, and a write is a short append. (The per-node rate limits change on every
call, so they live in a lighter shared table: `ca.rate_limit`.)

Every publish also counts up `publish-seq` (8 bytes beside the database, mapped by every process)
after its commit: a worker checks it before every CSR (`Publications.refresh`), a memory read,
and asks SQLite only when it moved (asking SQLite costs a file lock and a query, a tenth of a
CSR's CPU).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import mmap
import os
import sqlite3
import struct
from dataclasses import dataclass
from pathlib import Path

from meshward_common.errors import ConfigError

DB_FILE = "ca.db"
SEQ_FILE = "publish-seq"
_SEQ = struct.Struct("<Q")
# A writer holds the lock for microseconds; a reader never blocks. Far beyond that, something is
# wrong with the state dir: fail the call rather than hang it.
BUSY_TIMEOUT_MS = 5000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS join_tokens (
    sha256 TEXT PRIMARY KEY,
    node TEXT NOT NULL,
    expires REAL NOT NULL,      -- unix seconds
    used INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS published (
    name TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    data BLOB NOT NULL
);
"""


@dataclass(frozen=True)
class JoinTokenRow:
    node: str
    expires: dt.datetime
    used: bool


@dataclass(frozen=True)
class Published:
    version: str
    data: bytes


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class CaStore:
    """One process's connection to `ca.db`. Not shared between threads or across fork."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / DB_FILE
        try:
            # The database and its -wal/-shm files take this file's mode: create it 0600 first.
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
            self._db = sqlite3.connect(
                self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            # The tokens and buckets must survive a crashed process, not a crashed kernel: no
            # fsync per request.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._seq_fd = os.open(state_dir / SEQ_FILE, os.O_RDWR | os.O_CREAT, 0o600)
            with Flock(self._seq_fd):
                if os.fstat(self._seq_fd).st_size < _SEQ.size:
                    os.ftruncate(self._seq_fd, _SEQ.size)
            self._seq = mmap.mmap(self._seq_fd, _SEQ.size)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"{self.path}: cannot open the CA's state database: {exc}") from exc

    def close(self) -> None:
        self._db.close()
        self._seq.close()
        os.close(self._seq_fd)

    # -- join tokens --------------------------------------------------------------------------
    def add_join_token(
        self, digest: str, node: str, expires: dt.datetime, now: dt.datetime
    ) -> None:
        with self._db:  # one transaction: prune what can never be redeemed, add the new one
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "DELETE FROM join_tokens WHERE used = 1 OR expires <= ?", (now.timestamp(),)
            )
            self._db.execute(
                "INSERT INTO join_tokens (sha256, node, expires) VALUES (?, ?, ?)",
                (digest, node, expires.timestamp()),
            )

    def join_token(self, digest: str) -> JoinTokenRow | None:
        row = self._db.execute(
            "SELECT node, expires, used FROM join_tokens WHERE sha256 = ?", (digest,)
        ).fetchone()
        if row is None:
            return None
        return JoinTokenRow(str(row[0]), dt.datetime.fromtimestamp(row[1], dt.UTC), bool(row[2]))

    def use_join_token(self, digest: str, now: dt.datetime) -> str | None:
        """Mark an unused, unexpired token used and return its node: exactly one caller per
        token gets the node, every other gets None."""
        row = self._db.execute(
            "UPDATE join_tokens SET used = 1 WHERE sha256 = ? AND used = 0 AND expires > ? "
            "RETURNING node",
            (digest, now.timestamp()),
        ).fetchone()
        return None if row is None else str(row[0])

    def join_token_rows(self) -> list[tuple[str, str, float, int]]:
        """Every stored row (sha256, node, expires, used): for tests and inspection."""
        return list(self._db.execute("SELECT sha256, node, expires, used FROM join_tokens"))

    # -- published snapshots ------------------------------------------------------------------
    def publish(self, name: str, version: str, data: bytes) -> None:
        self._db.execute(
            "INSERT INTO published (name, version, data) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET version = excluded.version, data = excluded.data",
            (name, version, data),
        )
        self._count_publish()

    def unpublish(self, name: str) -> None:
        self._db.execute("DELETE FROM published WHERE name = ?", (name,))
        self._count_publish()

    def _count_publish(self) -> None:
        # After the commit (autocommit: the statement was it), so a reader that sees the new
        # count finds the row; under a lock, so two publishing processes never count once.
        with Flock(self._seq_fd):
            (seq,) = _SEQ.unpack_from(self._seq, 0)
            _SEQ.pack_into(self._seq, 0, seq + 1)

    def publish_seq(self) -> int:
        """How many publishes every process made so far: a memory read."""
        return int(_SEQ.unpack_from(self._seq, 0)[0])

    def published(self, name: str) -> Published | None:
        row = self._db.execute(
            "SELECT version, data FROM published WHERE name = ?", (name,)
        ).fetchone()
        return None if row is None else Published(str(row[0]), bytes(row[1]))

    def published_version(self, name: str) -> str | None:
        row = self._db.execute("SELECT version FROM published WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def data_version(self) -> int:
        """Changes whenever another connection committed: a cheap "anything new?" poll."""
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])


class Flock:
    """An exclusive flock(2) on an open file, held for a `with` block (shared tables in the
    state dir: the publish count, the rate-limit buckets)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
