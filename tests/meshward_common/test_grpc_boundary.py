"""The one gRPC error boundary: a servicer raises meshward errors, clients get the table's status
and turn it back into the same error; garbage and bugs are answered without leaking a traceback to
the caller or flooding the log."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc
import pytest

from meshward_common import errors
from meshward_common.grpc_boundary import StatusBoundary
from meshward_common.grpc_status import STATUS_OF, error_for, status_for
from meshward_common.protos import istio_ca_pb2, istio_ca_pb2_grpc
from meshward_common.protos import meshward_discovery_pb2 as mdpb
from meshward_common.protos import meshward_discovery_pb2_grpc as mdpb_grpc
from meshward_common.refusal_log import RefusalLog

CREATE = "/istio.v1.auth.IstioCertificateService/CreateCertificate"


@pytest.mark.parametrize(("cls", "code"), STATUS_OF, ids=[c.__name__ for c, _ in STATUS_OF])
def test_the_table_reads_both_ways(cls: type[errors.MeshwardError], code: grpc.StatusCode) -> None:
    assert status_for(cls("x")) == code
    back = error_for(code, "CA answered it")
    if cls is errors.ConfigError:
        # The peer's broken configuration is, for the caller, a peer that cannot serve yet.
        assert type(back) is errors.NotReady
    else:
        assert type(back) is cls
    assert str(back) == "CA answered it"


@pytest.mark.parametrize(
    "code",
    [grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DEADLINE_EXCEEDED, None],
)
def test_codes_outside_the_table_are_not_ready(code: grpc.StatusCode | None) -> None:
    assert type(error_for(code, "d")) is errors.NotReady


def test_rate_limited_survives_the_round_trip() -> None:
    # The copy in the agent mapped RESOURCE_EXHAUSTED to NotReady, losing RateLimited.
    assert isinstance(
        error_for(status_for(errors.RateLimited("slow down")), "d"), errors.RateLimited
    )


class _Ca(istio_ca_pb2_grpc.IstioCertificateServiceServicer):
    async def CreateCertificate(
        self, request: istio_ca_pb2.IstioCertificateRequest, context: grpc.aio.ServicerContext
    ) -> istio_ca_pb2.IstioCertificateResponse:
        if request.csr == "deny":
            raise errors.PermissionDenied("not yours")
        if request.csr == "bug":
            raise RuntimeError("secret internals")
        if request.csr == "abort":
            await context.abort(grpc.StatusCode.NOT_FOUND, "chosen by the servicer")
        return istio_ca_pb2.IstioCertificateResponse(cert_chain=["ok"])


class _Discovery(mdpb_grpc.MeshDiscoveryServicer):
    async def StreamMeshState(
        self, request: mdpb.MeshStateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[mdpb.MeshState]:
        yield mdpb.MeshState(version_info="1")
        raise errors.NotReady(f"gone after {request.version_info!r}")


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    server = grpc.aio.server()
    boundary = StatusBoundary(lambda ctx: "the-caller")
    boundary.add(server, istio_ca_pb2_grpc.add_IstioCertificateServiceServicer_to_server, _Ca())
    boundary.add(server, mdpb_grpc.add_MeshDiscoveryServicer_to_server, _Discovery())
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            yield ch
    finally:
        await server.stop(None)


async def _code(channel: grpc.aio.Channel, csr: str) -> tuple[grpc.StatusCode, str]:
    stub = istio_ca_pb2_grpc.IstioCertificateServiceStub(channel)  # type: ignore[no-untyped-call]
    try:
        await stub.CreateCertificate(istio_ca_pb2.IstioCertificateRequest(csr=csr), timeout=10)
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


async def test_errors_bugs_and_aborts_get_their_status(
    channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="meshward_common.grpc_boundary"):
        assert await _code(channel, "fine") == (grpc.StatusCode.OK, "")
        assert await _code(channel, "deny") == (grpc.StatusCode.PERMISSION_DENIED, "not yours")
        assert await _code(channel, "abort") == (
            grpc.StatusCode.NOT_FOUND,
            "chosen by the servicer",
        )
        assert await _code(channel, "bug") == (grpc.StatusCode.INTERNAL, "internal error")
    bugs = [r for r in caplog.records if r.exc_info]
    assert len(bugs) == 1  # a bug is ours to fix: its traceback is logged
    assert "the-caller" in bugs[0].getMessage()
    refusals = [r.getMessage() for r in caplog.records if not r.exc_info]
    assert refusals == [f"{CREATE} from the-caller refused, PERMISSION_DENIED: not yours"]


async def test_a_stream_ends_with_the_status_of_its_error(channel: grpc.aio.Channel) -> None:
    stub = mdpb_grpc.MeshDiscoveryStub(channel)  # type: ignore[no-untyped-call]
    got: list[str] = []

    async def read() -> None:
        async for state in stub.StreamMeshState(
            mdpb.MeshStateRequest(version_info="v"), timeout=10
        ):
            got.append(state.version_info)

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await read()
    assert got == ["1"]
    assert (info.value.code(), info.value.details()) == (
        grpc.StatusCode.UNAVAILABLE,
        "gone after 'v'",
    )


async def test_garbage_is_invalid_argument_and_never_reaches_the_servicer(
    channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    call = channel.unary_unary(CREATE)
    with caplog.at_level(logging.INFO):
        for _ in range(20):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call(b"\xff\xff\xff", timeout=10)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "is not a valid message" in (info.value.details() or "")
    assert not any(r.exc_info for r in caplog.records)
    lines = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(lines) == 1  # one source, one interval (10 s; the fake clock test pins the rest)


def test_refusal_log_says_once_per_source_per_interval_and_counts_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    refusals = RefusalLog(logging.getLogger("t"), interval=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="t"):
        for _ in range(5):
            refusals.refused("10.0.0.1", "bad from 10.0.0.1")
        refusals.refused("10.0.0.2", "bad from 10.0.0.2")
        now[0] += 9.9
        refusals.refused("10.0.0.1", "bad from 10.0.0.1")
        now[0] += 0.1
        refusals.refused("10.0.0.1", "bad again from 10.0.0.1")
    assert [r.getMessage() for r in caplog.records] == [
        "bad from 10.0.0.1",
        "bad from 10.0.0.2",
        "bad again from 10.0.0.1 (and 5 more from 10.0.0.1 since the last line)",
    ]
