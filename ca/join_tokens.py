"""Join tokens: how a node agent proves who it is for its first SVID.

`join-tokens.json` (0600) holds only the sha256 of each token, its node, expiry and a used flag.
`meshward ca join-token` appends to it; the running server re-reads it when a token is presented.
Both sides hold an exclusive flock on `join-tokens.lock` and replace the file atomically, so a
token is redeemed at most once even across processes.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ca.authority import write_private
from meshward_common.errors import ConfigError, Unauthenticated
from meshward_common.spiffe_id import validate_name

DEFAULT_TOKEN_TTL = dt.timedelta(hours=1)
TOKENS_FILE = "join-tokens.json"
LOCK_FILE = "join-tokens.lock"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class JoinTokenStore:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / TOKENS_FILE
        self._lock_path = state_dir / LOCK_FILE

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _load(self) -> list[dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{self.path}: unreadable join-token file: {exc}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("tokens"), list):
            raise ConfigError(f"{self.path}: expected {{'tokens': [...]}}")
        return list(data["tokens"])

    def _save(self, entries: list[dict[str, Any]]) -> None:
        write_private(self.path, json.dumps({"tokens": entries}, indent=1).encode())

    def create(self, node: str, ttl: dt.timedelta, now: dt.datetime) -> str:
        """Make a single-use token for `node`, valid for `ttl`; returns the token (shown once)."""
        validate_name("node name", node)
        token = secrets.token_urlsafe(32)
        with self._locked():
            # Drop entries that can never be redeemed again, so the file does not grow forever.
            entries = [
                e
                for e in self._load()
                if not e.get("used") and dt.datetime.fromisoformat(e["expires"]) > now
            ]
            entries.append(
                {
                    "sha256": _digest(token),
                    "node": node,
                    "expires": (now + ttl).isoformat(),
                    "used": False,
                }
            )
            self._save(entries)
        return token

    def check(self, token: str, now: dt.datetime) -> str:
        """The node a still-valid token belongs to, without using it up (a request that fails
        validation must not burn the node's only token)."""
        with self._locked():
            return str(self._find_valid(self._load(), token, now)["node"])

    def redeem(self, token: str, now: dt.datetime) -> str:
        """Mark the token used and return its node; Unauthenticated if unknown, used or expired."""
        with self._locked():
            entries = self._load()
            entry = self._find_valid(entries, token, now)
            entry["used"] = True
            self._save(entries)
            return str(entry["node"])

    @staticmethod
    def _find_valid(entries: list[dict[str, Any]], token: str, now: dt.datetime) -> dict[str, Any]:
        digest = _digest(token)
        for entry in entries:
            if not hmac.compare_digest(str(entry.get("sha256", "")), digest):
                continue
            if entry.get("used"):
                raise Unauthenticated("join token was already used")
            if dt.datetime.fromisoformat(entry["expires"]) <= now:
                raise Unauthenticated(f"join token expired at {entry['expires']}")
            return entry
        raise Unauthenticated("join token is not known to this CA")
