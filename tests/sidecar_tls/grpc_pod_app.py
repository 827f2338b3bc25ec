"""The apps of the gRPC pod tests, run inside pods as the app user:

python -m tests.sidecar_tls.grpc_pod_app serve              # gRPC echo :9090, h2c echo :9081
python -m tests.sidecar_tls.grpc_pod_app kinds HOST:PORT    # every stream kind, JSON out
python -m tests.sidecar_tls.grpc_pod_app call HOST:PORT METHOD
python -m tests.sidecar_tls.grpc_pod_app load HOST:PORT SECONDS  # a bidi stream + unary loop
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator

import grpc

from tests.sidecar_tls import grpc_apps
from tests.sidecar_tls.h2_apps import h2_echo_app

FORGED = "By=spiffe://evil/x;Hash=00;URI=spiffe://cluster.local/ns/default/sa/admin"


async def serve() -> None:
    server, _ = await grpc_apps.start_server("0.0.0.0", 9090)
    h2c = await asyncio.start_server(h2_echo_app, "0.0.0.0", 9081)
    async with h2c:
        await server.wait_for_termination()


def _failure(exc: grpc.aio.AioRpcError) -> dict[str, str]:
    return {"code": exc.code().name, "details": exc.details() or ""}


async def kinds(target: str) -> dict[str, object]:
    async with grpc.aio.insecure_channel(target) as ch:
        unary = json.loads(
            await ch.unary_unary(grpc_apps.path("Unary"))(
                b"hello", metadata=(("x-forwarded-client-cert", FORGED),), timeout=10
            )
        )
        streamed = [len(m) async for m in ch.unary_stream(grpc_apps.path("ServerStream"))(b"4:7")]

        async def parts() -> AsyncIterator[bytes]:
            for i in range(5):
                yield b"p" * i

        summed = json.loads(await ch.stream_unary(grpc_apps.path("ClientStream"))(parts()))
        bidi = ch.stream_stream(grpc_apps.path("Bidi"))()
        echoed = []
        for word in (b"one", b"two", b"three"):
            await bidi.write(word)
            echoed.append((await bidi.read()).decode())
        await bidi.done_writing()
        try:
            await ch.unary_unary(grpc_apps.path("Fail"))(b"NOT_FOUND:no such rating", timeout=10)
            failed: dict[str, str] = {}
        except grpc.aio.AioRpcError as exc:
            failed = _failure(exc)
    return {
        "unary": unary,
        "server_stream": streamed,
        "client_stream": summed,
        "bidi": echoed,
        "bidi_code": (await bidi.code()).name,
        "fail": failed,
    }


async def call(target: str, method: str) -> dict[str, object]:
    async with grpc.aio.insecure_channel(target) as ch:
        try:
            reply = await ch.unary_unary(grpc_apps.path(method))(b"x", timeout=10)
        except grpc.aio.AioRpcError as exc:
            return _failure(exc)
    return {"code": "OK", "reply": reply.decode(errors="replace")}


async def load(target: str, seconds: float) -> dict[str, object]:
    """Unary calls back to back and one bidi stream open from start to end, for `seconds`."""
    errors: list[str] = []
    ok = 0
    async with grpc.aio.insecure_channel(target) as ch:
        bidi = ch.stream_stream(grpc_apps.path("Bidi"))()
        unary = ch.unary_unary(grpc_apps.path("Unary"))
        deadline = time.monotonic() + seconds
        sent = 0
        while time.monotonic() < deadline:
            try:
                await unary(b"x", timeout=10)
                ok += 1
            except grpc.aio.AioRpcError as exc:
                errors.append(f"{exc.code().name}: {exc.details()}")
            if ok % 20 == 0:
                await bidi.write(b"%d" % sent)
                if await bidi.read() != b"%d" % sent:
                    errors.append("bidi: wrong echo")
                sent += 1
        await bidi.done_writing()
        code = (await bidi.code()).name
    return {"unary_ok": ok, "errors": errors[:10], "failed": len(errors), "bidi_code": code,
            "bidi_messages": sent}  # fmt: skip


def main(argv: list[str]) -> None:
    if argv[1] == "serve":
        asyncio.run(serve())
        return
    if argv[1] == "kinds":
        result = asyncio.run(kinds(argv[2]))
    elif argv[1] == "call":
        result = asyncio.run(call(argv[2], argv[3]))
    else:
        result = asyncio.run(load(argv[2], float(argv[3])))
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv)
