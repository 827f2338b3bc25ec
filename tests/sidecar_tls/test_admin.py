"""The admin/health HTTP server (no aiohttp): routing, refusals and what it answers on the wire."""

from __future__ import annotations

import asyncio
import json

import pytest

from sidecar_tls.admin import Reply, health_app, json_reply, route_request, serve_app


async def raw_request(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await reader.read()  # the server closes after one reply
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


@pytest.fixture
async def server():
    calls = {"n": 0}

    def config() -> Reply:
        calls["n"] += 1
        return json_reply({"calls": calls["n"]})

    def broken() -> Reply:
        raise RuntimeError("bug in a view")

    srv = await serve_app({"/config_dump": config, "/broken": broken}, "127.0.0.1", 0)
    try:
        yield srv
    finally:
        await srv.cleanup()


async def test_get_answers_json_with_length_and_close(server) -> None:
    status, headers, body = await raw_request(
        server.port, b"GET /config_dump?format=json HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    assert json.loads(body) == {"calls": 1}


async def test_head_has_the_headers_but_no_body(server) -> None:
    status, headers, body = await raw_request(server.port, b"HEAD /config_dump HTTP/1.1\r\n\r\n")
    assert (status, body) == (200, b"")
    assert int(headers["content-length"]) > 0


@pytest.mark.parametrize(
    ("request_bytes", "status", "says"),
    [
        (b"GET /nope HTTP/1.1\r\n\r\n", 404, b"no such path: /nope"),
        (b"POST /config_dump HTTP/1.1\r\ncontent-length: 0\r\n\r\n", 405, b"method POST"),
        (b"GET config_dump HTTP/1.1\r\n\r\n", 400, b"malformed request line"),
        (b"GET /broken HTTP/1.1\r\n\r\n", 500, b"internal error: RuntimeError"),
    ],
)
async def test_refusals(server, request_bytes: bytes, status: int, says: bytes) -> None:
    got_status, _, body = await raw_request(server.port, request_bytes)
    assert got_status == status
    assert says in body


async def test_oversized_head_is_refused_and_the_server_keeps_serving(server) -> None:
    status, _, body = await raw_request(
        server.port, b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n"
    )
    assert status == 400
    assert b"too large" in body
    status, _, _ = await raw_request(server.port, b"GET /config_dump HTTP/1.1\r\n\r\n")
    assert status == 200


def test_readiness_follows_the_predicate() -> None:
    ready = {"value": False}
    routes = health_app(lambda: ready["value"])
    request = b"GET /healthz/ready HTTP/1.1\r\n\r\n"
    assert route_request(routes, request)[0].status == 503
    ready["value"] = True
    reply, head_only = route_request(routes, request)
    assert (reply.status, reply.body, head_only) == (200, b"ready\n", False)


async def test_busy_port_is_a_config_error(server) -> None:
    from meshward_common.errors import ConfigError

    with pytest.raises(ConfigError, match=f"cannot serve HTTP on 127.0.0.1:{server.port}"):
        await serve_app({}, "127.0.0.1", server.port)
