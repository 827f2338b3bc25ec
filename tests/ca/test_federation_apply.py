"""Federation relationships changed at runtime (`Federation.apply`, what an edited config file
does) against a real bundle endpoint over TLS on loopback: a new trust domain starts from its
initial bundle and is fetched, a changed one restarts its fetching from the bundle in force (a
changed initial file wins), a removed one leaves the bundles and the state database, an unusable
one changes nothing; each change is heard once. And the config reader's side: the line a problem
is on, the keys that wait for a restart."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from ca.authority import ensure_state_dir, make_root
from ca.bundle_endpoint import BundleEndpoint
from ca.config import load_config, locate_problem
from ca.config_watch import ConfigSource, restart_only_changes
from ca.federation import FETCHED, SEEDED, Federation
from ca.federation_config import FederationRelationship
from ca.issuer import SigningAuthority
from ca.published import MESH_STATE, PublishedAuthority
from ca.publisher import Publisher
from ca.store import CaStore
from meshward_common.clock import utc_now
from meshward_common.errors import ConfigError
from meshward_common.spiffe_bundle import SpiffeBundle, encode_bundle
from meshward_common.spiffe_id import SpiffeId

A, B, C = "a.example", "b.example", "c.example"


def _endpoint_id(td: str) -> SpiffeId:
    return SpiffeId.parse(f"spiffe://{td}/meshward/control-plane")


async def _until(what: str, predicate: Callable[[], bool]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30.0
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def test_relationships_added_changed_and_removed_at_runtime(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    roots = {td: make_root(td, now - dt.timedelta(hours=1)) for td in (B, C)}
    b_next, _ = make_root(B, now - dt.timedelta(hours=1))
    for name in ("a", B, C):
        (tmp_path / name).mkdir(mode=0o700)
    initial = {td: tmp_path / f"{td}.json" for td in (B, C)}
    for td, path in initial.items():
        path.write_bytes(encode_bundle(SpiffeBundle(td, (roots[td][0],), 1)))

    async def scenario() -> None:
        endpoints = {}
        for td in (B, C):
            cert, key = roots[td]
            authority = PublishedAuthority(SigningAuthority(cert, key, (), (cert,)))
            endpoints[td] = BundleEndpoint(
                authority, td, CaStore(tmp_path / td), "127.0.0.1", 0,
                dt.timedelta(seconds=2), utc_now,
            )  # fmt: skip
            await endpoints[td].start()
        # B serves its next root beside the first: what a fetch brings, not the initial file.
        endpoints[B].body = encode_bundle(SpiffeBundle(B, (roots[B][0], b_next), 2, 2))
        rels = {
            td: FederationRelationship(
                td, f"https://127.0.0.1:{endpoints[td].port}/", _endpoint_id(td), initial[td]
            )
            for td in (B, C)
        }
        store = CaStore(tmp_path / "a")
        federation = Federation([rels[B]], store, utc_now, lambda: (), A)
        heard = []
        federation.on_change(lambda: heard.append(dict(federation.bundles())))
        federation.load()
        running = asyncio.create_task(federation.run())
        try:
            await _until("B fetched", lambda: federation.bundles()[B] == (roots[B][0], b_next))

            # Nothing changed: nothing heard.
            heard.clear()
            assert federation.apply([rels[B]]) == []
            assert heard == []

            # C added: its initial bundle at once, heard once, then fetched by its own follower.
            assert federation.apply([rels[B], rels[C]]) == [f"{C} added"]
            assert len(heard) == 1
            assert heard[0][C] == (roots[C][0],)
            await _until("C refreshed", lambda: federation.domains[C].refreshed is not None)
            assert federation.domains[C].error == ""

            # B's URL changed (to C's endpoint, whose certificate B's roots do not verify): B's fetching restarts
            # from the bundle in force, the last fetched (two roots), not the initial file.
            heard.clear()
            moved = replace(rels[B], url=rels[C].url)
            assert federation.apply([moved, rels[C]]) == [f"{B} changed"]
            assert len(heard) == 1
            assert federation.bundles()[B] == (roots[B][0], b_next)
            await _until("B's new URL tried", lambda: bool(federation.domains[B].error))
            port = endpoints[C].port
            assert f"TLS handshake with 127.0.0.1:{port} failed" in federation.domains[B].error
            assert federation.bundles()[B] == (roots[B][0], b_next)
            assert federation.status()[B]["bundle_endpoint_url"] == rels[C].url

            # B's initial file rewritten by the operator (same relationship otherwise): it wins.
            initial[B].write_bytes(encode_bundle(SpiffeBundle(B, (b_next,), 7)))
            assert federation.apply([moved, rels[C]]) == [f"{B} changed"]
            assert federation.bundles()[B] == (b_next,)

            # An unusable initial bundle for a new relationship: a ConfigError, nothing changes.
            heard.clear()
            bad = tmp_path / "bad.json"
            bad.write_text("{not json")
            before = federation.domains
            with pytest.raises(ConfigError, match=r"bad\.json"):
                federation.apply([moved, rels[C], replace(rels[C], trust_domain="d.example",
                                  endpoint_id=_endpoint_id("d.example"), trust_bundle=bad)])  # fmt: skip
            assert federation.domains is before
            assert heard == []

            # B removed: it leaves the bundles, the state database and its follower stops.
            assert federation.apply([rels[C]]) == [f"{B} removed"]
            assert set(federation.bundles()) == {C}
            assert len(heard) == 1
            assert set(heard[0]) == {C}
            assert store.published(FETCHED + B) is None
            assert store.published(SEEDED + B) is None
            assert set(federation._followers) == {C}
        finally:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
            for endpoint in endpoints.values():
                await endpoint.stop()
                endpoint.store.close()
        assert federation._followers == {}
        store.close()

    asyncio.run(scenario())


def test_a_problem_of_the_file_names_its_line_and_a_flags_does_not(tmp_path: Path) -> None:
    bundle = tmp_path / "b.json"
    bundle.write_text("{}")
    conf = tmp_path / "ca.yaml"
    conf.write_text(
        "workers: 2\n"
        "federates-with:\n"
        "  b.example:\n"
        "    bundle-endpoint-url: https://127.0.0.1:8443/\n"
        "    bundle-endpoint-profile: https_web\n"
        f"    trust-bundle: {bundle}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(conf, {})
    assert str(info.value).startswith(
        f"{conf}:5: federates-with.b.example.bundle-endpoint-profile: https_web is not supported"
    )
    conf.write_text("workers: many\n")
    with pytest.raises(ConfigError, match=rf"^{conf}:1: workers: 'many' is not a number"):
        load_config(conf, {})
    # Set by a flag over the file: the message is the flag's, no line of the file.
    with pytest.raises(ConfigError, match=r"^workers: 'lots' is not"):
        load_config(conf, {"workers": "lots"})
    # A problem found later (the initial bundle unusable) is located the same way.
    conf.write_text(
        "federates-with:\n  b.example:\n    bundle-endpoint-url: https://127.0.0.1:8443/\n"
        f"    endpoint-spiffe-id: spiffe://b.example/cp\n    trust-bundle: {bundle}\n"
    )
    late = ConfigError("federates-with.b.example.trust-bundle: not a bundle")
    assert str(locate_problem(conf, late, {})) == (
        f"{conf}:5: federates-with.b.example.trust-bundle: not a bundle"
    )
    assert str(locate_problem(conf, ConfigError("no key"), {})) == f"{conf}: no key"


def test_the_keys_that_wait_for_a_restart(tmp_path: Path) -> None:
    bundle = tmp_path / "b.json"
    bundle.write_text("{}")
    started = load_config(None, {"listen": "127.0.0.1:1", "workers": 2, "state-dir": "/s"})
    federation = {
        "b.example": {
            "bundle-endpoint-url": "https://127.0.0.1:8443/",
            "endpoint-spiffe-id": "spiffe://b.example/cp",
            "trust-bundle": str(bundle),
        }
    }
    same_but_federated = load_config(
        None,
        {"listen": "127.0.0.1:1", "workers": 2, "state-dir": "/s", "federates-with": federation},
    )
    assert restart_only_changes(started, same_but_federated) == ()
    moved = load_config(
        None,
        {"listen": "127.0.0.2:3", "workers": 1, "state-dir": "/t", "agent-service-account": "x/y"},
    )
    assert restart_only_changes(started, moved) == (
        "listen", "state-dir", "workers", "agent-service-account",
    )  # fmt: skip


def test_one_edit_is_one_new_mesh_state_version(tmp_path: Path) -> None:
    """Two relationships added and one restart-only key changed in one edit: the workers get one
    new mesh state version (the publisher's real store, its writes counted)."""
    now = dt.datetime.now(dt.UTC)
    conf = tmp_path / "ca.yaml"
    conf.write_text(f"state-dir: {tmp_path / 'state'}\ntrust-domain: {A}\nworkers: 1\n")
    peers = ""
    for td in (B, C):
        bundle = tmp_path / f"{td}.json"
        bundle.write_bytes(encode_bundle(SpiffeBundle(td, (make_root(td, now)[0],), 1)))
        peers += (
            f"  {td}:\n    bundle-endpoint-url: https://127.0.0.1:9/\n"
            f"    endpoint-spiffe-id: {_endpoint_id(td)}\n    trust-bundle: {bundle}\n"
        )
    source = ConfigSource(conf, {})
    config = source.load()
    ensure_state_dir(config.state_dir)
    store = CaStore(config.state_dir)
    published: list[str] = []
    real_publish = store.publish

    def counted(name: str, version: str, data: bytes) -> None:
        if name == MESH_STATE:
            published.append(version)
        real_publish(name, version, data)

    store.publish = counted  # type: ignore[method-assign]

    async def scenario() -> None:
        publisher = Publisher(config, store, utc_now, source)
        await publisher.start()
        assert len(published) == 1
        conf.write_text(
            conf.read_text().replace("workers: 1", "workers: 2") + "federates-with:\n" + peers
        )
        await publisher._follow_config()
        assert len(published) == 2
        assert set(publisher.mesh.state.trust_bundles) == {A, B, C}
        assert publisher.config_watch is not None
        assert publisher.config_watch.restart_pending == ("workers",)
        await publisher._follow_config()  # the file did not change again: nothing
        assert len(published) == 2

    try:
        asyncio.run(scenario())
    finally:
        store.close()
