"""The one error boundary of every meshward gRPC server: errors in, status codes out.

A servicer raises meshward errors (`InvalidRequest`, `PermissionDenied`, ...) and nothing else;
`StatusBoundary` answers each with the status of `grpc_status.STATUS_OF` and logs it once per
source per interval. It wraps a servicer's method handlers once, as they are added to the server
(`StatusBoundary.add`), not per call as a server interceptor would: grpcio runs an interceptor
chain for every call (~60 us of CPU on the CA's 2-core machine, a tenth of grpcio's own cost per
unary call). Two things never reach a servicer:

- A request that does not parse. grpcio would answer UNKNOWN and log a traceback per request
  (one client sending garbage in a loop filled the log at 290 KB/s); here it is INVALID_ARGUMENT
  and a single line, before any authentication.
- A bug. An exception that is not a meshward error is logged with its traceback (it is ours to
  fix) and answered INTERNAL without its text, which may hold internals.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, NoReturn, TypeAlias

import grpc

from meshward_common.errors import InvalidRequest, MeshwardError
from meshward_common.grpc_status import status_for
from meshward_common.refusal_log import RefusalLog

log = logging.getLogger(__name__)

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
SourceOf = Callable[[Context], str]


class _Malformed:
    """What the tolerant deserializer hands on instead of raising: why the bytes did not parse."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:  # protobuf's DecodeError and whatever a parser raises on garbage
            return _Malformed(f"{type(exc).__name__}: {exc}"[:200])

    return parse


def _peer(context: Context) -> str:
    return str(context.peer())


class StatusBoundary:
    """`boundary.add(server, add_servicer_to_server, servicer)` in place of the generated
    `add_servicer_to_server(servicer, server)`: every method of the servicer answers through it.

    `source_of` names the caller for the refusal log (the CA gives the TLS client's address, not
    the front door's loopback port); one line per source per `interval` seconds.
    """

    def __init__(self, source_of: SourceOf = _peer, refusals: RefusalLog | None = None) -> None:
        self.source_of = source_of
        self.refusals = refusals or RefusalLog(log)

    def add(
        self,
        server: grpc.aio.Server,
        add_to_server: Callable[[Any, Any], None],
        servicer: object,
    ) -> None:
        """Register `servicer` on `server` as the generated `add_to_server` would, each method
        handler wrapped in this boundary."""
        capture = _Registrations()
        add_to_server(servicer, capture)
        if not capture.services:
            raise TypeError(f"{add_to_server.__name__} registered no method handlers by name")
        for service, handlers in capture.services.items():
            wrapped = {
                name: self.wrap(f"/{service}/{name}", handler) for name, handler in handlers.items()
            }
            server.add_generic_rpc_handlers(
                (grpc.method_handlers_generic_handler(service, wrapped),)
            )
            server.add_registered_method_handlers(service, wrapped)

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """`handler` answering through this boundary (streaming requests: as they are)."""
        if handler.request_streaming:
            return handler  # a shape we do not serve
        fields: dict[str, Any] = {"request_deserializer": _tolerant(handler.request_deserializer)}
        if handler.unary_unary is not None:
            fields["unary_unary"] = self._unary(method, handler.unary_unary)
        if handler.unary_stream is not None:
            fields["unary_stream"] = self._stream(method, handler.unary_stream)
        return handler._replace(**fields)

    def _unary(self, method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def answer(request: Any, context: Context) -> Any:
            try:
                self._parsed(method, request)
                return await behavior(request, context)
            except grpc.aio.AbortError:
                raise  # the servicer chose its status itself
            except MeshwardError as exc:
                await self._refuse(method, context, exc)
            except Exception as exc:
                await self._fail(method, context, exc)

        return answer

    def _stream(self, method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def answer(request: Any, context: Context) -> AsyncIterator[Any]:
            try:
                self._parsed(method, request)
                async for message in behavior(request, context):
                    yield message
            except grpc.aio.AbortError:
                raise
            except MeshwardError as exc:
                await self._refuse(method, context, exc)
            except Exception as exc:
                await self._fail(method, context, exc)

        return answer

    def _parsed(self, method: str, request: Any) -> None:
        if isinstance(request, _Malformed):
            raise InvalidRequest(f"{method}: the request is not a valid message ({request.reason})")

    async def _refuse(self, method: str, context: Context, exc: MeshwardError) -> NoReturn:
        code = status_for(exc)
        source = self._source(context)
        self.refusals.refused(source, f"{method} from {source} refused, {code.name}: {exc}")
        await context.abort(code, str(exc))
        raise AssertionError("unreachable: abort raises")  # pragma: no cover

    async def _fail(self, method: str, context: Context, exc: Exception) -> NoReturn:
        log.error("%s from %s failed", method, self._source(context), exc_info=exc)
        await context.abort(grpc.StatusCode.INTERNAL, "internal error")
        raise AssertionError("unreachable: abort raises")  # pragma: no cover

    def _source(self, context: Context) -> str:
        try:
            return self.source_of(context)
        except Exception:  # naming the caller must never turn a refusal into a failure
            return _peer(context)


class _Registrations:
    """Stands in for the server while a generated `add_..._to_server` registers its handlers."""

    def __init__(self) -> None:
        self.services: dict[str, Mapping[str, grpc.RpcMethodHandler]] = {}

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        pass  # the same handlers arrive by name below

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]
    ) -> None:
        self.services[service] = handlers
