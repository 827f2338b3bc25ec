"""Join tokens: how a node agent proves who it is for its first SVID.

The CA's state database (`ca.store`) holds only the sha256 of each token, its node, expiry and a
used flag. `meshward ca join-token` adds to it; every worker of the running server reads it. A
token is marked used by one conditional UPDATE, so it is redeemed exactly once however many
workers race for it.
"""

from __future__ import annotations

import datetime as dt
import secrets
from pathlib import Path

from ca.store import CaStore, token_digest
from meshward_common.errors import Unauthenticated
from meshward_common.spiffe_id import validate_name

DEFAULT_TOKEN_TTL = dt.timedelta(hours=1)


class JoinTokenStore:
    def __init__(self, store: CaStore | Path) -> None:
        self.store = store if isinstance(store, CaStore) else CaStore(store)

    def create(self, node: str, ttl: dt.timedelta, now: dt.datetime) -> str:
        """Make a single-use token for `node`, valid for `ttl`; returns the token (shown once)."""
        validate_name("node name", node)
        token = secrets.token_urlsafe(32)
        self.store.add_join_token(token_digest(token), node, now + ttl, now)
        return token

    def check(self, token: str, now: dt.datetime) -> str:
        """The node a still-valid token belongs to, without using it up (a request that fails
        validation must not burn the node's only token)."""
        row = self.store.join_token(token_digest(token))
        if row is None:
            raise Unauthenticated("join token is not known to this CA")
        if row.used:
            raise Unauthenticated("join token was already used")
        if row.expires <= now:
            raise Unauthenticated(f"join token expired at {row.expires.isoformat()}")
        return row.node

    def redeem(self, token: str, now: dt.datetime) -> str:
        """Mark the token used and return its node; Unauthenticated if unknown, used or expired."""
        node = self.store.use_join_token(token_digest(token), now)
        if node is not None:
            return node
        self.check(token, now)  # says why not
        raise Unauthenticated("join token was already used")  # redeemed between the two reads
