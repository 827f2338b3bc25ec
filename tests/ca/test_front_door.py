"""The TLS front door: the internal gRPC port trusts only connections it relayed itself."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest

from ca.config import build_config
from ca.front_door import CaPeerTable, PeerInfo
from ca.server import ControlPlane
from meshward_common.protos import istio_ca_pb2, istio_ca_pb2_grpc


def test_peer_table_maps_only_relayed_loopback_ports() -> None:
    table = CaPeerTable()
    info = PeerInfo(b"cert", "10.0.0.1:5555")
    table.register(40000, info)
    assert table.lookup("ipv4:127.0.0.1:40000") is info
    assert table.lookup("ipv4:127.0.0.1:40001") is None
    assert table.lookup("ipv6:[::1]:40000") is None
    assert table.lookup("unix:") is None
    assert table.lookup("ipv4:127.0.0.1:notaport") is None
    table.unregister(40000)
    assert table.lookup("ipv4:127.0.0.1:40000") is None
    assert len(table) == 0


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[ControlPlane]:
    registry = tmp_path / "registry.yaml"
    registry.write_text("workloads: []\n")
    cfg = build_config(
        {"listen": "127.0.0.1:0", "state-dir": str(tmp_path / "state"), "registry": str(registry)}
    )
    cp = ControlPlane(cfg)
    await cp.start()
    try:
        yield cp
    finally:
        await cp.stop()


async def test_bypassing_the_tls_port_is_unauthenticated(plane: ControlPlane) -> None:
    assert plane._door is not None
    internal = f"127.0.0.1:{plane._door.upstream_port}"
    async with grpc.aio.insecure_channel(internal) as ch:
        stub = istio_ca_pb2_grpc.IstioCertificateServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.CreateCertificate(
                istio_ca_pb2.IstioCertificateRequest(csr="x"),
                metadata=(("authorization", "Bearer anything"),),
            )
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "did not come through" in (info.value.details() or "")
    assert plane.port != plane._door.upstream_port
    assert (plane.config.state_dir / "audit.log").read_text().count('"refused"') == 1


async def test_server_certificate_is_reissued_at_half_life(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio
    import datetime as dt
    import ssl

    import ca.server

    monkeypatch.setattr(ca.server, "ROTATION_CHECK_SECONDS", 0.05)
    offset = [dt.timedelta(0)]
    cfg = build_config({"listen": "127.0.0.1:0", "state-dir": str(tmp_path / "state")})
    cp = ControlPlane(cfg, clock=lambda: dt.datetime.now(dt.UTC) + offset[0])
    await cp.start()
    try:
        first = cp.server_cert
        await asyncio.sleep(0.2)
        assert cp.server_cert is first, "no rotation before half-life"
        offset[0] = dt.timedelta(hours=13)
        for _ in range(100):
            await asyncio.sleep(0.05)
            if cp.server_cert is not first:
                break
        assert cp.server_cert.not_after > first.not_after
        # The fake clock is 13 h ahead, so only fetch the certificate: do not verify its dates.
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        _, writer = await asyncio.open_connection("127.0.0.1", cp.port, ssl=ctx)
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        from cryptography import x509

        served = x509.load_der_x509_certificate(der)
        assert served.not_valid_after_utc == cp.server_cert.not_after
    finally:
        await cp.stop()


def _bundle(plane: ControlPlane) -> bytes:
    return (plane.config.state_dir / "trust-bundle.pem").read_bytes()


async def _no_credential_call(plane: ControlPlane) -> grpc.aio.AioRpcError:
    creds = grpc.ssl_channel_credentials(_bundle(plane))
    # A local subchannel pool: one connection per channel, closed with the channel.
    options = [
        ("grpc.ssl_target_name_override", "meshward-control-plane"),
        ("grpc.use_local_subchannel_pool", 1),
    ]
    async with grpc.aio.secure_channel(f"127.0.0.1:{plane.port}", creds, options=options) as ch:
        stub = istio_ca_pb2_grpc.IstioCertificateServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.CreateCertificate(istio_ca_pb2.IstioCertificateRequest(csr="x"))
    return info.value


async def _wait_until(predicate: Callable[[], bool]) -> bool:
    for _ in range(1200):  # 30 s: generous on a loaded machine
        if predicate():
            return True
        await asyncio.sleep(0.025)
    return predicate()


async def test_a_client_that_never_handshakes_does_not_stall_others(plane: ControlPlane) -> None:
    # A silent connection waits alone (10 s handshake limit); the others are served meanwhile.
    with socket.create_connection(("127.0.0.1", plane.port)):
        err = await _no_credential_call(plane)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "no credential" in (err.details() or "")


async def test_concurrent_calls_are_relayed(plane: ControlPlane) -> None:
    errors = await asyncio.gather(*(_no_credential_call(plane) for _ in range(8)))
    assert [e.code() for e in errors] == [grpc.StatusCode.UNAUTHENTICATED] * 8
    assert all("no credential" in (e.details() or "") for e in errors)
    lines = (plane.config.state_dir / "audit.log").read_text().splitlines()
    assert len(lines) == 8


async def test_each_connection_is_mapped_until_it_closes(plane: ControlPlane) -> None:
    assert plane._door is not None
    door = plane._door
    ctx = _client_context(plane)
    conns = [await asyncio.open_connection("127.0.0.1", plane.port, ssl=ctx) for _ in range(4)]
    assert await _wait_until(lambda: len(door.peers) == 4), "a relayed connection is not mapped"
    for _, writer in conns:
        writer.close()
        # The CA's gRPC server may send its SETTINGS after our close_notify; our side then ends
        # the TLS shutdown with APPLICATION_DATA_AFTER_CLOSE_NOTIFY. The connection is closed
        # either way, and that is what this test is about.
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await writer.wait_closed()
    assert await _wait_until(lambda: len(door.peers) == 0), "a closed connection stays mapped"


def _client_context(plane: ControlPlane) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=_bundle(plane).decode())
    ctx.check_hostname = False
    ctx.set_alpn_protocols(["h2"])
    return ctx


async def test_stop_closes_open_connections_and_the_port(tmp_path: Path) -> None:
    cfg = build_config({"listen": "127.0.0.1:0", "state-dir": str(tmp_path / "state")})
    cp = ControlPlane(cfg)
    await cp.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", cp.port, ssl=_client_context(cp))
    try:
        await cp.stop()
        # The relay closed our connection: EOF (or a reset), not a hang.
        try:
            rest = await asyncio.wait_for(reader.read(), timeout=10)
        except (ConnectionError, ssl.SSLError):
            rest = b""
        # gRPC's server preface (SETTINGS) may precede the close; after it, nothing but EOF.
        assert reader.at_eof() or rest == b""
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", cp.port), timeout=2).close()
    finally:
        writer.close()
