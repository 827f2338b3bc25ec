"""An upstream that does not answer: the sidecars answer in time instead of hanging the caller.
HTTP/1.1 and plain HTTP/2 requests get 504 `upstream request timeout` once the request timeout
has passed since the request was sent whole; a gRPC call is bounded by the caller's grpc-timeout
(answered UNAVAILABLE, as Envoy maps 504), and the app's stream is cancelled."""

from __future__ import annotations

import pytest

from sidecar_tls.http2.headers import grpc_timeout_s
from tests.sidecar_tls import grpc_apps
from tests.sidecar_tls.h2_apps import RawH2Client
from tests.sidecar_tls.loopback import (
    CLIENT_ID,
    SERVER_ID,
    http_echo_app,
    http_get,
    sidecar_pair,
    silent_app,
)
from tests.sidecar_tls.testca import MiniCA

SHORT = 0.5  # seconds: the request timeout of these pairs (the default is 15 s)


async def test_an_http1_request_the_app_never_answers_gets_504() -> None:
    ca = MiniCA.create()
    async with sidecar_pair(
        ca.issue(CLIENT_ID), ca.issue(SERVER_ID), silent_app, request_timeout=SHORT
    ) as pair:
        status, body = await http_get(pair.outbound_port, "/stuck")
    assert status == 504
    assert b"upstream request timeout" in body


async def test_an_answered_http1_request_is_not_cut_by_the_request_timeout() -> None:
    ca = MiniCA.create()
    async with sidecar_pair(
        ca.issue(CLIENT_ID), ca.issue(SERVER_ID), http_echo_app, request_timeout=SHORT
    ) as pair:
        status, _ = await http_get(pair.outbound_port, "/fine")
    assert status == 200


async def test_a_plain_http2_request_the_app_never_answers_gets_504() -> None:
    ca = MiniCA.create()
    async with sidecar_pair(
        ca.issue(CLIENT_ID), ca.issue(SERVER_ID), silent_app, request_timeout=SHORT
    ) as pair:
        client = await RawH2Client.connect(pair.outbound_port)
        try:
            sid = client.request("/stuck")
            outcomes = await client.settle(within_s=30)
        finally:
            client.close()
    assert outcomes[sid].status == 504
    assert b"upstream request timeout" in outcomes[sid].body


def _grpc_head(timeout: str | None) -> list[tuple[str, str]]:
    head = [("content-type", "application/grpc"), ("te", "trailers")]
    return head + ([("grpc-timeout", timeout)] if timeout is not None else [])


async def test_a_grpc_call_past_its_grpc_timeout_gets_unavailable_from_the_sidecar(
    grpc_app: int,
) -> None:
    # A raw client that keeps no deadline of its own: what it gets is the sidecars' answer. The
    # pair's request timeout is the default (15 s): only the caller's grpc-timeout applies.
    ca = MiniCA.create()
    async with sidecar_pair(ca.issue(CLIENT_ID), ca.issue(SERVER_ID), app_port=grpc_app) as pair:
        client = await RawH2Client.connect(pair.outbound_port)
        try:
            empty_message = b"\x00\x00\x00\x00\x00"
            hung = client.request(
                grpc_apps.path("Hang"), _grpc_head("300m"), method="POST", body=empty_message
            )
            echoed = client.request(
                grpc_apps.path("Echo"), _grpc_head("30S"), method="POST", body=empty_message
            )
            outcomes = await client.settle(within_s=30)
        finally:
            client.close()
    assert outcomes[hung].status == 200  # gRPC's trailers-only answer
    assert outcomes[hung].headers.get("grpc-status") == "14"  # UNAVAILABLE
    assert outcomes[hung].headers.get("grpc-message") == "upstream request timeout"
    # the other call on the same connection, with time to spare, is answered by the app
    assert outcomes[echoed].status == 200
    assert outcomes[echoed].reset is None
    assert outcomes[echoed].body == empty_message


def test_grpc_timeout_values_as_the_grpc_http2_spec_writes_them() -> None:
    assert grpc_timeout_s("300m") == pytest.approx(0.3)
    assert grpc_timeout_s("2S") == 2.0
    assert grpc_timeout_s("1H") == 3600.0
    assert grpc_timeout_s("99999999n") == pytest.approx(0.099999999)
    for bad in ("", "S", "5", "5s", "-1S", "123456789S", "1.5S"):
        assert grpc_timeout_s(bad) is None, bad
