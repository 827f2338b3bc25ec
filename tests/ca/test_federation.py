"""SPIFFE federation between two real control planes (`meshward ca serve`, trust domains
a.example and b.example) on loopback: A fetches B's bundle from B's bundle endpoint (https_spiffe),
refreshes it when B rotates its root, keeps the last good one when B is gone, refuses an endpoint
with the wrong SPIFFE ID and a bundle for the wrong trust domain; A's node agent serves B's bundle
as `federated_bundles` to unmodified SPIFFE clients (the `spiffe` package and go-spiffe)."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from spiffe import WorkloadApiClient, X509Source

from ca.authority import make_root
from ca.bundle_client import FetchError, client_context, fetch_bundle
from ca.bundle_endpoint import BundleEndpoint
from ca.federation import Federation
from ca.federation_config import FederationRelationship
from ca.issuer import SigningAuthority
from ca.published import PublishedAuthority
from ca.store import CaStore
from meshward.inspect.checks import federation_checks
from meshward_common.clock import utc_now
from meshward_common.spiffe_bundle import SpiffeBundle, encode_bundle, parse_bundle
from meshward_common.spiffe_id import SpiffeId
from tests.harness.control_plane import REPO, ControlPlane, free_port, run_control_plane
from tests.harness.federation import (
    build_spiffe_client,
    bundle_endpoint_args,
    endpoint_id,
    federation_config,
    spiffe_client,
)
from tests.harness.node_agent import run_node_agent

pytestmark = pytest.mark.slow

A, B = "a.example", "b.example"
REGISTRY_A = f"""workloads:
  - name: tester
    namespace: default
    serviceAccount: tester
    node: node-1
    selector: {{netns: host, uids: [{os.getuid()}]}}
"""


def wait_until(
    what: str, predicate: Callable[[], bool], logs: Callable[[], str], timeout: float = 40.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}\n{logs()}")


def sha256s(certs: list[x509.Certificate]) -> list[str]:
    return sorted(
        hashlib.sha256(c.public_bytes(serialization.Encoding.DER)).hexdigest() for c in certs
    )


def status(cp: ControlPlane) -> dict:
    path = cp.state_dir / "ca-status.json"
    return json.loads(path.read_text()) if path.exists() else {}


def bundle_show(cp: ControlPlane, out: Path) -> Path:
    done = subprocess.run(
        [sys.executable, "-m", "meshward", "ca", "bundle", "show", "--state-dir", str(cp.state_dir)],
        cwd=REPO, capture_output=True, check=True,
    )  # fmt: skip
    out.write_bytes(done.stdout)
    return out


@pytest.fixture(scope="module")
def go_client() -> Path:
    return build_spiffe_client()


@pytest.fixture
def mesh_b(tmp_path: Path) -> Iterator[tuple[ControlPlane, int]]:
    port = free_port()
    with run_control_plane(
        tmp_path / "b", "workloads: []\n", trust_domain=B, extra_args=bundle_endpoint_args(port)
    ) as cp:
        yield cp, port


def test_a_fetches_bs_bundle_refreshes_it_and_spiffe_clients_see_it_federated(
    tmp_path: Path, mesh_b: tuple[ControlPlane, int], go_client: Path
) -> None:
    cp_b, b_port = mesh_b
    assert f"bundle endpoint on https://127.0.0.1:{b_port}/" in cp_b.log()
    initial = bundle_show(cp_b, tmp_path / "b.json")
    (b_root,) = x509.load_pem_x509_certificates(cp_b.bundle_pem())
    # go-spiffe's own bundle endpoint client reads B's endpoint (format, TLS, SPIFFE ID).
    got = spiffe_client("-fetch", f"https://127.0.0.1:{b_port}/", "-trust-domain", B,
                        "-endpoint-id", endpoint_id(B), "-bundle", str(initial))  # fmt: skip
    assert got == {"roots": sha256s([b_root]), "sequence": 1, "refresh_hint_seconds": 2}

    config = federation_config(tmp_path / "a.yaml", B, b_port, initial)
    with (
        run_control_plane(
            tmp_path / "a", REGISTRY_A, trust_domain=A, extra_args=("--config", str(config))
        ) as cp_a,  # fmt: skip
        run_node_agent(tmp_path, cp_a) as agent,
    ):

        def logs():
            return f"== A\n{cp_a.log()[-3000:]}\n== B\n{cp_b.log()[-2000:]}\n== agent\n{agent.log()[-2000:]}"

        wait_until("A's status shows a refresh of B", lambda: bool(
            status(cp_a).get("federation", {}).get(B, {}).get("refreshed")), logs)  # fmt: skip
        (a_root,) = x509.load_pem_x509_certificates(cp_a.bundle_pem())

        source = X509Source(socket_path=agent.endpoint, timeout_in_seconds=20)
        try:
            context = source.get_x509_context()
            assert str(context.default_svid.spiffe_id) == f"spiffe://{A}/ns/default/sa/tester"
            bundle_set = context.x509_bundle_set
            bundles = {
                td: sha256s(list(bundle_set.get_bundle_for_trust_domain(_td(td)).x509_authorities))
                for td in (A, B)
            }
            assert bundles == {A: sha256s([a_root]), B: sha256s([b_root])}
        finally:
            source.close()
        with WorkloadApiClient(socket_path=agent.endpoint) as client:
            bundle_set = client.fetch_x509_bundles(timeout=10)
            assert sha256s(
                list(bundle_set.get_bundle_for_trust_domain(_td(B)).x509_authorities)
            ) == sha256s([b_root])
        seen = spiffe_client("-socket", agent.endpoint)
        assert seen["svid"] == f"spiffe://{A}/ns/default/sa/tester"
        assert seen["x509_context_bundles"] == {A: sha256s([a_root]), B: sha256s([b_root])}
        assert seen["x509_bundles"] == seen["x509_context_bundles"]

        # B rotates its root: the new one reaches A's workloads through A's next refresh.
        out = subprocess.run(
            [sys.executable, "-m", "meshward", "ca", "rotate-root", "--state-dir",
             str(cp_b.state_dir), "--grace", "1h"],
            cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        wait_until("B's bundle holds two roots", lambda: len(x509.load_pem_x509_certificates(cp_b.bundle_pem())) == 2, logs)  # fmt: skip
        b_roots = x509.load_pem_x509_certificates(cp_b.bundle_pem())
        wait_until("A's workloads see both of B's roots", lambda: spiffe_client(
            "-socket", agent.endpoint)["x509_bundles"].get(B) == sha256s(b_roots), logs)  # fmt: skip
        assert status(cp_a)["federation"][B]["sequence"] == 2

        # B goes away: A keeps the last good bundle and says why in its status.
        cp_b.stop()
        wait_until("A's status shows the failed refresh", lambda: "cannot connect" in
                   status(cp_a)["federation"][B]["error"], logs)  # fmt: skip
        assert spiffe_client("-socket", agent.endpoint)["x509_bundles"][B] == sha256s(b_roots)
        assert (
            "federated bundle of b.example not refreshed, keeping the last good one" in cp_a.log()
        )
        (check,) = federation_checks(status(cp_a))  # what `meshward check` says of it
        assert not check.ok
        assert "2 root(s), sequence 2 kept" in check.detail
        assert "cannot connect" in check.detail


def _td(name: str):  # type: ignore[no-untyped-def]
    from spiffe import TrustDomain

    return TrustDomain(name)


# -- the fetcher against a real endpoint on loopback, in process -------------------------------

NOW = dt.datetime.now(dt.UTC)


def _authority(td: str) -> PublishedAuthority:
    cert, key = make_root(td, NOW - dt.timedelta(hours=1))
    return PublishedAuthority(SigningAuthority(cert, key, (), (cert,)))


async def _serving(tmp_path: Path, authority: PublishedAuthority, td: str) -> BundleEndpoint:
    store = CaStore(tmp_path / td)
    endpoint = BundleEndpoint(
        authority, td, store, "127.0.0.1", 0, dt.timedelta(seconds=2), utc_now
    )
    await endpoint.start()
    return endpoint


def test_the_wrong_endpoint_id_wrong_roots_or_wrong_trust_domain_are_refused(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        b, c = _authority(B), _authority("c.example")
        for td in (B, "c.example"):
            (tmp_path / td).mkdir(mode=0o700)
        endpoint = await _serving(tmp_path, b, B)
        url = f"https://127.0.0.1:{endpoint.port}/"
        now = dt.datetime.now(dt.UTC)
        try:
            got = await fetch_bundle(url, B, SpiffeId.parse(endpoint_id(B)), b.roots, now)
            assert got.x509_authorities == b.roots
            assert got.sequence == 1
            with pytest.raises(
                FetchError,
                match=re.escape(
                    "presented spiffe://b.example/meshward/control-plane, not the configured spiffe://b.example/bundle"
                ),
            ):
                await fetch_bundle(
                    url, B, SpiffeId.parse("spiffe://b.example/bundle"), b.roots, now
                )
            with pytest.raises(FetchError, match=r"TLS handshake .* failed"):
                await fetch_bundle(url, B, SpiffeId.parse(endpoint_id(B)), c.roots, now)
            endpoint.body = encode_bundle(SpiffeBundle("c.example", c.roots, 9))
            with pytest.raises(
                FetchError, match=re.escape("root names trust domain c.example, not b.example")
            ):
                await fetch_bundle(url, B, SpiffeId.parse(endpoint_id(B)), b.roots, now)

            # The federation keeps its last good bundle through such a refusal.
            store = CaStore(tmp_path / "c.example")
            initial = tmp_path / "b.json"
            initial.write_bytes(encode_bundle(SpiffeBundle(B, b.roots, 1)))
            rel = FederationRelationship(B, url, SpiffeId.parse(endpoint_id(B)), initial)
            federation = Federation([rel], store, utc_now, lambda: (), A)
            federation.load()
            assert await federation.refresh(B) is False
            assert federation.bundles()[B] == b.roots
            assert "wrong trust domain" in federation.domains[B].error
            store.close()
        finally:
            await endpoint.stop()
            endpoint.store.close()

    asyncio.run(scenario())


def test_a_bundle_endpoint_serves_the_spec_format(tmp_path: Path) -> None:
    async def scenario() -> bytes:
        (tmp_path / B).mkdir(mode=0o700)
        b = _authority(B)
        endpoint = await _serving(tmp_path, b, B)
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1",
                endpoint.port,
                ssl=client_context(b.roots),
            )
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = await reader.read(-1)
            writer.close()
            return data
        finally:
            await endpoint.stop()
            endpoint.store.close()

    data = asyncio.run(scenario())
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"Content-Type: application/json; charset=utf-8" in head
    bundle = parse_bundle(body, B, "test")
    assert (bundle.sequence, bundle.refresh_hint) == (1, 2)
