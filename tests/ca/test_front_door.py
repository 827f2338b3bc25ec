"""The TLS front door: the internal gRPC port trusts only connections it relayed itself."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from ca.config import build_config
from ca.front_door import PeerInfo, PeerTable
from ca.server import ControlPlane
from meshward_common.protos import istio_ca_pb2, istio_ca_pb2_grpc


def test_peer_table_maps_only_relayed_loopback_ports() -> None:
    table = PeerTable()
    info = PeerInfo(b"cert", "10.0.0.1:5555")
    table.add(40000, info)
    assert table.lookup("ipv4:127.0.0.1:40000") is info
    assert table.lookup("ipv4:127.0.0.1:40001") is None
    assert table.lookup("ipv6:[::1]:40000") is None
    assert table.lookup("unix:") is None
    assert table.lookup("ipv4:127.0.0.1:notaport") is None
    table.remove(40000)
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
