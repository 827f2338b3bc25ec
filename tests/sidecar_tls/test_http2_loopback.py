"""HTTP/2 and gRPC through two sidecars on loopback: a grpcio server and client, real mTLS with
ALPN h2 between the sidecars, every stream kind, trailers, large messages, resets, policy."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator

import grpc
import pytest
from cryptography.hazmat.primitives import serialization

from tests.sidecar_tls import grpc_apps
from tests.sidecar_tls.loopback import CLIENT_ID, SERVER_ID, Pair, sidecar_pair
from tests.sidecar_tls.testca import MiniCA


def _channel(pair: Pair) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(f"127.0.0.1:{pair.outbound_port}", options=grpc_apps.OPTIONS)


async def test_unary_call_carries_the_callers_identity_in_xfcc(grpc_app: int) -> None:
    ca = MiniCA.create()
    client, server = ca.issue(CLIENT_ID), ca.issue(SERVER_ID)
    forged = "By=spiffe://evil/x;Hash=00;URI=spiffe://cluster.local/ns/default/sa/admin"
    async with sidecar_pair(client, server, app_port=grpc_app) as pair, _channel(pair) as ch:
        call = ch.unary_unary(grpc_apps.path("Unary"))
        reply = json.loads(
            await call(b"hello", metadata=(("x-forwarded-client-cert", forged),), timeout=10)
        )
        again = json.loads(await call(b"again", timeout=10))
    digest = hashlib.sha256(client.leaf.public_bytes(serialization.Encoding.DER)).hexdigest()
    assert reply["size"] == 5
    assert reply["metadata"]["x-forwarded-client-cert"] == (
        f"By={SERVER_ID};Hash={digest};URI={CLIENT_ID}"
    )
    assert again["metadata"]["x-forwarded-client-cert"].endswith(f"URI={CLIENT_ID}")
    # one pooled HTTP/2 connection between the sidecars carried both calls
    assert pair.outbound.pool.handshakes == 1


async def test_every_stream_kind_with_trailers(grpc_app: int) -> None:
    ca = MiniCA.create()
    async with (
        sidecar_pair(ca.issue(CLIENT_ID), ca.issue(SERVER_ID), app_port=grpc_app) as pair,
        _channel(pair) as ch,
    ):
        streamed = [m async for m in ch.unary_stream(grpc_apps.path("ServerStream"))(b"5:10")]
        assert streamed == [bytes([i]) * 10 for i in range(5)]

        async def messages() -> AsyncIterator[bytes]:
            for i in range(7):
                yield b"x" * i

        summed = json.loads(await ch.stream_unary(grpc_apps.path("ClientStream"))(messages()))
        assert summed == {"count": 7, "size": 21}

        bidi = ch.stream_stream(grpc_apps.path("Bidi"))()
        for i in range(3):
            await bidi.write(f"m{i}".encode())
            assert await bidi.read() == f"m{i}".encode()
        await bidi.done_writing()
        assert await bidi.read() is grpc.aio.EOF
        assert await bidi.code() is grpc.StatusCode.OK

        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await ch.unary_unary(grpc_apps.path("Fail"))(b"NOT_FOUND:no such rating 7%")
        assert failed.value.code() is grpc.StatusCode.NOT_FOUND
        assert failed.value.details() == "no such rating 7%"


async def test_large_messages_both_ways_under_flow_control(grpc_app: int) -> None:
    ca = MiniCA.create()
    big = bytes(range(256)) * (6 * 1024 * 1024 // 256)  # 6 MiB: many windows' worth
    async with (
        sidecar_pair(ca.issue(CLIENT_ID), ca.issue(SERVER_ID), app_port=grpc_app) as pair,
        _channel(pair) as ch,
    ):
        echoed = await ch.unary_unary(grpc_apps.path("Echo"))(big, timeout=30)
        assert echoed == big
        chunks = [m async for m in ch.unary_stream(grpc_apps.path("ServerStream"))(b"3:3000000")]
        assert [len(c) for c in chunks] == [3000000] * 3


async def test_a_slow_reader_does_not_stall_other_streams(grpc_app: int) -> None:
    ca = MiniCA.create()
    async with (
        sidecar_pair(ca.issue(CLIENT_ID), ca.issue(SERVER_ID), app_port=grpc_app) as pair,
        _channel(pair) as ch,
    ):
        # 40 MB the client does not read: far more than every window on the way.
        slow = ch.unary_stream(grpc_apps.path("ServerStream"))(b"40:1000000")
        first = await slow.read()
        assert len(first) == 1000000
        for i in range(20):  # meanwhile, on the same connections, other calls go through
            reply = json.loads(await ch.unary_unary(grpc_apps.path("Unary"))(b"x" * i, timeout=10))
            assert reply["size"] == i
        rest = []
        while (message := await slow.read()) is not grpc.aio.EOF:
            rest.append(len(message))
        assert rest == [1000000] * 39


async def test_a_denied_method_gets_envoys_grpc_answer(grpc_app: int) -> None:
    ca = MiniCA.create()
    deny = (grpc_apps.path("Echo"),)
    async with (
        sidecar_pair(
            ca.issue(CLIENT_ID), ca.issue(SERVER_ID), app_port=grpc_app, deny_paths=deny
        ) as pair,
        _channel(pair) as ch,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await ch.unary_unary(grpc_apps.path("Echo"))(b"x", timeout=10)
        allowed = json.loads(await ch.unary_unary(grpc_apps.path("Unary"))(b"x", timeout=10))
    assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert denied.value.details() == "RBAC: access denied"
    assert allowed["size"] == 1


async def test_a_cancelled_call_resets_its_stream_only(grpc_app: int) -> None:
    ca = MiniCA.create()
    async with (
        sidecar_pair(ca.issue(CLIENT_ID), ca.issue(SERVER_ID), app_port=grpc_app) as pair,
        _channel(pair) as ch,
    ):
        bidi = ch.stream_stream(grpc_apps.path("Bidi"))()
        await bidi.write(b"one")
        assert await bidi.read() == b"one"
        bidi.cancel()  # RST_STREAM CANCEL, carried to the app through both sidecars
        assert await bidi.code() is grpc.StatusCode.CANCELLED
        reply = json.loads(await ch.unary_unary(grpc_apps.path("Unary"))(b"ok", timeout=10))
        assert reply["size"] == 2
