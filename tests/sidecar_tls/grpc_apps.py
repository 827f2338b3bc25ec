"""A grpcio echo service with every stream kind, for the HTTP/2 data-path tests (messages are raw
bytes: generic handlers, no generated code).

    /test.Echo/Unary         -> JSON {"metadata": {...}, "size": n} of what the server received
    /test.Echo/Echo          -> the request, unchanged (large messages)
    /test.Echo/ServerStream  request "N:SIZE" -> N messages of SIZE bytes
    /test.Echo/ClientStream  -> JSON {"count": n, "size": total bytes}
    /test.Echo/Bidi          -> each message back as it comes
    /test.Echo/Fail          request "CODE:message" -> ends with that status and message
    /test.Echo/Hang          -> never answers (until the call is cancelled)
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import grpc

SERVICE = "test.Echo"


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    return {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}


async def _unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return json.dumps({"metadata": _metadata(context), "size": len(request)}).encode()


async def _echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


async def _server_stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    count, size = (int(x) for x in request.decode().split(":"))
    for i in range(count):
        yield bytes([i % 256]) * size


async def _client_stream(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
) -> bytes:
    count = size = 0
    async for message in requests:
        count += 1
        size += len(message)
    return json.dumps({"count": count, "size": size}).encode()


async def _bidi(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
) -> AsyncIterator[bytes]:
    async for message in requests:
        yield message


async def _fail(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    code, _, message = request.decode().partition(":")
    await context.abort(grpc.StatusCode[code], message)
    raise AssertionError("abort returns never")


async def _hang(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    await asyncio.Event().wait()
    raise AssertionError("never set")


def handler() -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(_unary),
            "Echo": grpc.unary_unary_rpc_method_handler(_echo),
            "ServerStream": grpc.unary_stream_rpc_method_handler(_server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(_client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(_bidi),
            "Fail": grpc.unary_unary_rpc_method_handler(_fail),
            "Hang": grpc.unary_unary_rpc_method_handler(_hang),
        },
    )


MAX_MESSAGE = 16 * 1024 * 1024
OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
]


async def start_server(host: str = "127.0.0.1", port: int = 0) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(options=OPTIONS)
    server.add_generic_rpc_handlers((handler(),))
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    return server, bound


def path(method: str) -> str:
    return f"/{SERVICE}/{method}"
