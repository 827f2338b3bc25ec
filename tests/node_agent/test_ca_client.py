"""Secure naming: the agent talks to the CA only if its certificate names the control plane."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshward_common.errors import NotReady, RateLimited, Unauthenticated
from meshward_common.svid import pem_of
from node_agent.ca_client import (
    create_certificate,
    make_channel,
    make_csr,
    split_root,
    verify_control_plane,
)
from tests.harness.control_plane import run_control_plane
from tests.node_agent.certs import MiniCA


async def tls_server(tmp_path, ca: MiniCA, spiffe_id: str):
    key = ec.generate_private_key(ec.SECP256R1())
    chain = ca.issue(
        key.public_key(), spiffe_id, dt.timedelta(hours=1), dns=("meshward-control-plane",)
    )
    (tmp_path / "cert.pem").write_bytes(pem_of(chain[:1]))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    ctx.set_alpn_protocols(["h2"])

    async def handle(reader, writer):
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    return server, f"127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def test_control_plane_certificate_is_accepted(tmp_path):
    ca = MiniCA()
    server, address = await tls_server(
        tmp_path, ca, "spiffe://cluster.local/meshward/control-plane"
    )
    async with server:
        sid = await verify_control_plane(address, pem_of([ca.root]))
    assert str(sid) == "spiffe://cluster.local/meshward/control-plane"


async def test_workload_certificate_from_the_same_root_is_refused(tmp_path):
    ca = MiniCA()
    server, address = await tls_server(tmp_path, ca, "spiffe://cluster.local/ns/default/sa/evil")
    async with server:
        with pytest.raises(Unauthenticated, match="not the control plane"):
            await verify_control_plane(address, pem_of([ca.root]))


async def test_certificate_from_another_root_is_refused(tmp_path):
    server, address = await tls_server(
        tmp_path, MiniCA(), "spiffe://cluster.local/meshward/control-plane"
    )
    async with server:
        with pytest.raises(NotReady, match="TLS failed"):
            await verify_control_plane(address, pem_of([MiniCA().root]))


def test_split_root_separates_the_self_signed_root():
    ca = MiniCA()
    leaf, root = ca.issue(
        ec.generate_private_key(ec.SECP256R1()).public_key(),
        "spiffe://cluster.local/x",
        dt.timedelta(hours=1),
    )
    assert split_root([leaf, root]) == ([leaf], [root])


async def test_the_agent_sees_a_rate_limited_ca_as_rate_limited(tmp_path):
    # The agent's own mapping of status codes turned RESOURCE_EXHAUSTED into NotReady.
    with run_control_plane(
        tmp_path, "workloads: []\n", extra_args=("--rate-limit", "0.01", "--rate-burst", "1")
    ) as cp:
        channel = make_channel(cp.address, cp.bundle_pem(), None)
        try:
            key = ec.generate_private_key(ec.SECP256R1())
            await create_certificate(
                channel, make_csr(key, None), None, join_token=cp.join_token("node-1")
            )
            with pytest.raises(RateLimited, match=r"CA answered RESOURCE_EXHAUSTED: .*rate limit"):
                await create_certificate(
                    channel, make_csr(key, None), None, join_token=cp.join_token("node-1")
                )
            with pytest.raises(Unauthenticated, match="CA answered UNAUTHENTICATED"):
                await create_certificate(channel, make_csr(key, None), None, join_token="nope")
        finally:
            await channel.close()
