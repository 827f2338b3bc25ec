"""`ca.native_port` on its own, in this test's event loop, over real mTLS with a grpcio client:
a unary method runs at once in the loop's callback and only becomes a task when it has to wait.
These are the paths a servicer that waits takes (a contended lock, a TokenReview): answered
as a task, each call in its own context, and cancelled where it waits when the port stops."""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from ca.authority import cert_pem, key_pem, make_root
from ca.issuer import SigningAuthority, issue_svid
from ca.native_port import NativeGrpcPort
from ca.server import KEEPALIVE_MAX, KEEPALIVE_TIMEOUT, MAX_MESSAGE_BYTES, issue_server_cert
from meshward_common.front_door import DoorLimits, listening_socket
from meshward_common.protos import istio_ca_pb2, istio_ca_pb2_grpc
from meshward_common.spiffe_id import node_id

TD = "cluster.local"
SEEN: contextvars.ContextVar[str] = contextvars.ContextVar("seen", default="")


class _Service(istio_ca_pb2_grpc.IstioCertificateServiceServicer):
    """What it does is named by the request's csr field."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.waiting = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def CreateCertificate(
        self, request: istio_ca_pb2.IstioCertificateRequest, context: object
    ) -> istio_ca_pb2.IstioCertificateResponse:
        what = request.csr
        before = SEEN.get()
        SEEN.set(what)  # a call's context is its own: the next call must not see this
        if what == "yield":
            await asyncio.sleep(0)
        elif what == "sleep":
            await asyncio.sleep(0.01)
        elif what == "wait":
            self.waiting.set()
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        elif what == "fail-after-wait":
            await asyncio.sleep(0)
            raise RuntimeError("the servicer failed")
        return istio_ca_pb2.IstioCertificateResponse(cert_chain=[what, before])


@dataclass
class _Served:
    port: NativeGrpcPort
    service: _Service
    channel: grpc.aio.Channel
    stub: istio_ca_pb2_grpc.IstioCertificateServiceStub


@pytest.fixture
async def served() -> AsyncIterator[_Served]:
    now = dt.datetime.now(dt.UTC)
    root, root_key = make_root(TD, now)
    authority = SigningAuthority(root, root_key, (), (root,))
    server = issue_server_cert(authority, TD, now)
    node_key = ec.generate_private_key(ec.SECP256R1())
    node = issue_svid(
        authority, node_key.public_key(), node_id(TD, "n1"), dt.timedelta(hours=1), now
    )
    port = NativeGrpcPort(
        listening_socket("127.0.0.1", 0),
        server.cert_pem,
        server.key_pem,
        cert_pem(root),
        limits=DoorLimits(10.0, 300.0, 64, 64),
        keepalive=(KEEPALIVE_MAX, KEEPALIVE_TIMEOUT),
        max_message=MAX_MESSAGE_BYTES,
    )
    service = _Service()
    istio_ca_pb2_grpc.add_IstioCertificateServiceServicer_to_server(service, port)  # type: ignore[arg-type]
    port.start()
    creds = grpc.ssl_channel_credentials(cert_pem(root), key_pem(node_key), cert_pem(node[0]))
    channel = grpc.aio.secure_channel(
        f"127.0.0.1:{port.port}",
        creds,
        options=[("grpc.ssl_target_name_override", "meshward-control-plane")],
    )
    stub = istio_ca_pb2_grpc.IstioCertificateServiceStub(channel)  # type: ignore[no-untyped-call]
    try:
        yield _Served(port, service, channel, stub)
    finally:
        await channel.close()
        await port.stop()


async def _ask(s: _Served, what: str) -> list[str]:
    request = istio_ca_pb2.IstioCertificateRequest(csr=what)
    response = await s.stub.CreateCertificate(request, timeout=30)
    return list(response.cert_chain)


async def test_calls_that_wait_and_calls_that_do_not_are_all_answered(served: _Served) -> None:
    kinds = ["now", "yield", "sleep"] * 20
    answers = await asyncio.gather(*(_ask(served, what) for what in kinds))
    assert [a[0] for a in answers] == kinds
    # Every call ran in a context of its own: none saw what another one set.
    assert {a[1] for a in answers} == {""}
    assert not served.port._tasks  # the tasks of the calls that waited are gone


async def test_a_call_waiting_on_another_is_answered_once_released(served: _Served) -> None:
    waiting = asyncio.ensure_future(_ask(served, "wait"))
    await asyncio.wait_for(served.service.waiting.wait(), 30)
    assert await _ask(served, "now") == ["now", ""]  # the waiting call holds nothing up
    served.service.release.set()
    assert await asyncio.wait_for(waiting, 30) == ["wait", ""]


async def test_a_servicer_failing_after_it_waited_is_internal(served: _Served) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _ask(served, "fail-after-wait")
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert caught.value.details() == "internal error"
    assert await _ask(served, "now") == ["now", ""]


async def test_stopping_cancels_a_waiting_call_and_its_caller_learns_unavailable(
    served: _Served,
) -> None:
    waiting = asyncio.ensure_future(_ask(served, "wait"))
    await asyncio.wait_for(served.service.waiting.wait(), 30)
    await served.port.stop()
    assert served.service.cancelled.is_set()  # cancelled where it waited
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await asyncio.wait_for(waiting, 30)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
