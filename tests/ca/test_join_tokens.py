"""Join tokens: bound to one node, single use, expiring; only a digest is stored."""

from __future__ import annotations

import datetime as dt
import os
import stat
from pathlib import Path

import pytest

from ca.join_tokens import JoinTokenStore
from ca.store import token_digest
from meshward_common.errors import SpiffeIdError, Unauthenticated

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)


def test_token_is_redeemed_once_for_its_node(tmp_path: Path) -> None:
    store = JoinTokenStore(tmp_path)
    token = store.create("node-1", HOUR, NOW)
    assert store.check(token, NOW) == "node-1"
    assert store.check(token, NOW) == "node-1", "check does not use the token up"
    assert store.redeem(token, NOW) == "node-1"
    with pytest.raises(Unauthenticated, match="already used"):
        store.redeem(token, NOW)
    with pytest.raises(Unauthenticated, match="already used"):
        store.check(token, NOW)


def test_expired_and_unknown_tokens_are_refused(tmp_path: Path) -> None:
    store = JoinTokenStore(tmp_path)
    token = store.create("node-1", HOUR, NOW)
    with pytest.raises(Unauthenticated, match="expired"):
        store.redeem(token, NOW + HOUR)
    with pytest.raises(Unauthenticated, match="not known"):
        store.redeem("guess", NOW)


def test_database_holds_only_digests_and_is_0600(tmp_path: Path) -> None:
    store = JoinTokenStore(tmp_path)
    token = store.create("node-1", HOUR, NOW)
    for path in tmp_path.glob("ca.db*"):
        assert token.encode() not in path.read_bytes()
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
    ((digest, node, _expires, used),) = store.store.join_token_rows()
    assert (digest, node, used) == (token_digest(token), "node-1", 0)


def test_a_second_store_on_the_same_dir_sees_tokens_and_their_use(tmp_path: Path) -> None:
    token = JoinTokenStore(tmp_path).create("node-2", HOUR, NOW)
    assert JoinTokenStore(tmp_path).redeem(token, NOW) == "node-2"
    with pytest.raises(Unauthenticated):
        JoinTokenStore(tmp_path).redeem(token, NOW)


def test_spent_and_expired_entries_are_pruned_on_create(tmp_path: Path) -> None:
    store = JoinTokenStore(tmp_path)
    store.redeem(store.create("node-1", HOUR, NOW), NOW)
    store.create("node-2", HOUR, NOW)
    store.create("node-3", HOUR, NOW + 2 * HOUR)
    nodes = [row[1] for row in store.store.join_token_rows()]
    assert nodes == ["node-3"]


def test_invalid_node_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SpiffeIdError):
        JoinTokenStore(tmp_path).create("Node_1", HOUR, NOW)
