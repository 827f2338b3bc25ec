"""The state database's publish count: what lets a worker skip SQLite on every CSR."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest

from ca.authority import make_root
from ca.issuer import SigningAuthority
from ca.published import Publications, PublishedAuthority, publish_authority
from ca.store import CaStore


def test_every_publish_from_any_process_moves_the_count(tmp_path: Path) -> None:
    a, b = CaStore(tmp_path), CaStore(tmp_path)  # two processes' connections
    try:
        start = a.publish_seq()
        a.publish("x", "1", b"one")
        assert b.publish_seq() == start + 1
        b.publish("y", "1", b"two")
        b.unpublish("x")
        assert a.publish_seq() == start + 3
        assert (tmp_path / "publish-seq").stat().st_mode & 0o777 == 0o600
    finally:
        a.close()
        b.close()


def test_a_worker_asks_sqlite_only_when_something_was_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    supervisor, worker = CaStore(tmp_path), CaStore(tmp_path)
    asked: list[int] = []
    real = worker.data_version
    monkeypatch.setattr(worker, "data_version", lambda: asked.append(1) or real())
    now = dt.datetime.now(dt.UTC)
    cert, key = make_root("cluster.local", now)
    try:
        publish_authority(supervisor, PublishedAuthority(SigningAuthority(cert, key, (), (cert,))))
        publications = Publications(worker, "cluster.local")

        async def calls() -> None:
            await publications.refresh()
            assert publications.authority is not None
            assert len(asked) == 1
            for _ in range(100):
                await publications.refresh()
            assert len(asked) == 1, "nothing new: no query"
            other, other_key = make_root("cluster.local", now)
            publish_authority(
                supervisor, PublishedAuthority(SigningAuthority(other, other_key, (), (other,)))
            )
            await publications.refresh()
            assert len(asked) == 2
            assert publications.authority.signer.cert == other

        asyncio.run(calls())
    finally:
        supervisor.close()
        worker.close()
