"""A federated bundle endpoint that goes bad: it serves garbage, something that is not TLS,
presents another SPIFFE ID, or is gone. Each problem is one log line naming the endpoint (once,
not once per refresh), and the last good bundle stays in force; a good answer clears the error.
The fetcher and the endpoint are the real ones, over TLS on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from dataclasses import replace
from pathlib import Path

import pytest

from ca.authority import make_root
from ca.bundle_endpoint import BundleEndpoint
from ca.federation import Federation
from ca.federation_config import FederationRelationship
from ca.issuer import SigningAuthority
from ca.published import PublishedAuthority
from ca.store import CaStore
from meshward_common.clock import utc_now
from meshward_common.spiffe_bundle import SpiffeBundle, encode_bundle
from meshward_common.spiffe_id import SpiffeId

A, B = "a.example", "b.example"
ENDPOINT_ID = SpiffeId.parse(f"spiffe://{B}/meshward/control-plane")


def _errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "ca.federation" and r.levelno >= logging.ERROR]


async def _not_tls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(1)
    writer.write(b"HTTP/1.1 200 OK\r\n\r\nthis is no TLS\r\n")
    await writer.drain()
    writer.close()


def test_a_bad_endpoint_is_one_line_and_the_last_good_bundle_stays(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ca.federation")
    now = dt.datetime.now(dt.UTC)
    b_root, b_key = make_root(B, now - dt.timedelta(hours=1))
    b_next, _ = make_root(B, now - dt.timedelta(hours=1))
    (tmp_path / "b").mkdir(mode=0o700)
    (tmp_path / "a").mkdir(mode=0o700)
    initial = tmp_path / "b.json"
    initial.write_bytes(encode_bundle(SpiffeBundle(B, (b_root,), 1)))

    async def scenario() -> None:
        authority = PublishedAuthority(SigningAuthority(b_root, b_key, (), (b_root,)))
        endpoint_store, store = CaStore(tmp_path / "b"), CaStore(tmp_path / "a")
        endpoint = BundleEndpoint(
            authority, B, endpoint_store, "127.0.0.1", 0, dt.timedelta(seconds=2), utc_now
        )
        await endpoint.start()
        not_tls = await asyncio.start_server(_not_tls, "127.0.0.1", 0)
        url = f"https://127.0.0.1:{endpoint.port}/"
        rel = FederationRelationship(B, url, ENDPOINT_ID, initial)
        federation = Federation([rel], store, utc_now, lambda: (), A)
        federation.load()
        domain = federation.domains[B]
        try:
            # A good refresh: B now serves its next root beside the first (sequence 2).
            endpoint.body = encode_bundle(SpiffeBundle(B, (b_root, b_next), 2, 2))
            assert await federation.refresh(B) is True
            good = federation.bundles()[B]
            assert good == (b_root, b_next)
            assert _errors(caplog) == []

            async def refused_once(expect: str) -> None:
                before = len(_errors(caplog))
                for _ in range(3):  # the same problem at every refresh: logged once
                    assert await federation.refresh(B) is False
                    assert federation.bundles()[B] == good
                new = _errors(caplog)[before:]
                assert len(new) == 1, [r.getMessage() for r in new]
                line = new[0].getMessage()
                assert "\n" not in line, line
                assert new[0].exc_info is None, line
                assert line.startswith(
                    "federated bundle of b.example not refreshed, keeping the last good one "
                    "(2 root(s)): "
                ), line
                assert expect in line, line
                assert expect in domain.error

            endpoint.body = b"\x00<html>garbage{"
            await refused_once(f"{url}: bundle is not UTF-8 JSON")
            endpoint.body = b'{"keys": "none"}'
            await refused_once(f"{url}: bundle is not a JWK Set")

            port = not_tls.sockets[0].getsockname()[1]
            domain.relationship = replace(rel, url=f"https://127.0.0.1:{port}/")
            await refused_once(f"TLS handshake with 127.0.0.1:{port} failed")

            other = SpiffeId.parse(f"spiffe://{B}/spire/server")
            domain.relationship = replace(rel, endpoint_id=other)
            await refused_once(
                f"{url}: the bundle endpoint presented {ENDPOINT_ID}, not the configured {other}"
            )

            # Good again: the error is cleared, nothing more is logged, the bundle is the same.
            domain.relationship = rel
            endpoint.body = encode_bundle(SpiffeBundle(B, (b_root, b_next), 2, 2))
            before = len(_errors(caplog))
            assert await federation.refresh(B) is False
            assert domain.error == ""
            assert domain.refreshed is not None
            assert len(_errors(caplog)) == before

            await endpoint.stop()
            await refused_once("cannot connect to 127.0.0.1")
        finally:
            not_tls.close()
            await not_tls.wait_closed()
            with contextlib.suppress(Exception):
                await endpoint.stop()
            endpoint_store.close()
        # The last good bundle is also what a restart starts from (kept in the state database).
        again = Federation([rel], store, utc_now, lambda: (), A)
        again.load()
        assert again.bundles()[B] == good
        store.close()

    asyncio.run(scenario())
