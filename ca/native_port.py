"""The CA's mTLS port on its native transport: TLS, HTTP/2 and gRPC framing in `ca._native_grpc`
(Rust: rustls, the h2 crate; `native/ca_grpc`, built by `make native`), the servicers here in
Python.

grpcio spends ~450-520 us of CPU per unary call on this machine before a servicer runs, as much as
verifying and signing a CSR; the native transport ~80 us, Python's side of the hand-off included
(`python -m bench ca`, the no-op rows). It decides nothing: the
TLS handshake requires a client certificate chaining to the trust bundle (as grpcio's did), and
every call reaches the same servicers through the same `StatusBoundary` as on 15012, with the
verified client leaf as its `PeerInfo`.

The hand-off: calls wait in the native side's queue, an eventfd wakes this loop, which takes them
all at once. A unary method runs at once, in the loop's callback (a task only if it has to wait:
a task per call cost more than the rest of the hand-off), and the answers of one batch leave
together once it is done, so the transport thread wakes once per batch rather than once per call.
A stream runs as a task; its messages go back one by one, and it is cancelled when its caller goes
away.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime as dt
import logging
import socket
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, NoReturn

import grpc

from ca.front_door import PeerInfo
from meshward_common.errors import ConfigError
from meshward_common.front_door import DoorLimits

log = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 1.0
_OK = grpc.StatusCode.OK.value[0]
_INTERNAL = grpc.StatusCode.INTERNAL.value[0]
_UNIMPLEMENTED = grpc.StatusCode.UNIMPLEMENTED.value[0]


def native_module() -> Any:
    """`ca._native_grpc`, or one line saying how to build it."""
    try:
        from ca import _native_grpc
    except ImportError as exc:
        raise ConfigError(
            f"mtls-listen: the CA's native transport is not built ({exc}); run `make native`"
        ) from exc
    return _native_grpc


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class NativeContext:
    """What the servicers and the `StatusBoundary` use of `grpc.aio.ServicerContext`."""

    __slots__ = ("call",)

    def __init__(self, call: Any) -> None:
        self.call = call

    def peer(self) -> str:
        return str(self.call.peer)

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return tuple(self.call.metadata)

    async def abort(self, code: grpc.StatusCode, details: str = "") -> NoReturn:
        raise _Aborted(code, details)


class NativePeers:
    """Who called over the native port: the client leaf rustls verified in the handshake."""

    def peer_of(self, context: Any) -> PeerInfo | None:
        der = context.call.peer_der
        # "ipv4:10.0.0.1:5000" -> "10.0.0.1:5000", as the front door names its callers.
        return None if der is None else PeerInfo(der, context.call.peer.partition(":")[2])


class NativeGrpcPort:
    """A listening socket served natively. Servicers are added as to a grpcio server (through
    `StatusBoundary.add`); `start()` begins taking calls."""

    def __init__(
        self,
        sock: socket.socket,
        chain_pem: bytes,
        key_pem: bytes,
        bundle_pem: bytes,
        *,
        limits: DoorLimits,
        keepalive: tuple[dt.timedelta, dt.timedelta],
        max_message: int,
    ) -> None:
        module = native_module()
        self.port = int(sock.getsockname()[1])
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._streams: dict[int, asyncio.Task[None]] = {}
        self._server = module.Server(
            sock.detach(),
            chain_pem,
            key_pem,
            bundle_pem,
            handshake_timeout=limits.handshake_timeout or 3600.0,
            keepalive_interval=keepalive[0].total_seconds(),
            keepalive_timeout=keepalive[1].total_seconds(),
            max_connections=limits.max_connections or 1 << 30,
            max_per_source=limits.max_per_source or 1 << 30,
            max_message=max_message,
            grace=STOP_GRACE_SECONDS,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        # While a batch is taken: the unary answers it produced, sent when it is done.
        self._answers: list[tuple[Any, bytes]] | None = None

    # The registration surface `StatusBoundary.add` uses (a generated add_..._to_server's).
    def add_generic_rpc_handlers(self, handlers: object) -> None:
        pass  # the same handlers arrive by name

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]
    ) -> None:
        for name, handler in handlers.items():
            self._handlers[f"/{service}/{name}"] = handler

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._server.wakeup_fd(), self._take)

    def use_tls(self, chain_pem: bytes, key_pem: bytes, bundle_pem: bytes) -> None:
        """A new certificate or bundle, for every handshake from now on."""
        self._server.set_tls(chain_pem, key_pem, bundle_pem)

    async def stop(self) -> None:
        """Stop accepting; calls in flight finish within the grace, then the rest are cut."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._server.stop)
        if self._loop is not None:
            self._loop.remove_reader(self._server.wakeup_fd())
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _take(self) -> None:
        answers: list[tuple[Any, bytes]] = []
        self._answers = answers
        try:
            for event in self._server.take():
                if isinstance(event, int):
                    task = self._streams.pop(event, None)
                    if task is not None:
                        task.cancel()
                else:
                    self._dispatch(event)
        finally:
            self._answers = None
            for call, message in answers:
                call.answer(message)

    def _answer(self, call: Any, message: bytes) -> None:
        if self._answers is not None:
            self._answers.append((call, message))
        else:  # a call that had to wait: its batch has gone
            call.answer(message)

    def _run_eagerly(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` now; if it has to wait, a task takes it on from there. Each call in its
        own context, as a task would run it."""
        context = contextvars.copy_context()
        try:
            waiting = context.run(coro.send, None)
        except StopIteration:
            return
        task = asyncio.get_running_loop().create_task(_resume(coro, waiting), context=context)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _dispatch(self, call: Any) -> None:
        handler = self._handlers.get(call.method)
        if handler is None:
            call.finish(_UNIMPLEMENTED, f"method {call.method} is not served on this port")
            return
        deserialize: Callable[[bytes], Any] = handler.request_deserializer or _raw
        request = deserialize(call.message)
        context = NativeContext(call)
        if handler.unary_unary is not None:
            self._run_eagerly(self._unary(handler, request, context))
            return
        if handler.unary_stream is not None:
            task = asyncio.create_task(self._stream(handler, request, context))
            self._streams[call.id] = task
        else:
            call.finish(_UNIMPLEMENTED, f"method {call.method}: streaming requests are not served")
            return
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)

    async def _unary(
        self, handler: grpc.RpcMethodHandler, request: Any, context: NativeContext
    ) -> None:
        call = context.call
        try:
            response = await handler.unary_unary(request, context)
            serialize: Callable[[Any], bytes] = handler.response_serializer or _raw
            message = serialize(response)
        except _Aborted as aborted:
            call.finish(aborted.code.value[0], aborted.details)
            return
        except Exception:
            log.exception("%s from %s failed", call.method, call.peer)
            call.finish(_INTERNAL, "internal error")
            return
        self._answer(call, message)

    async def _stream(
        self, handler: grpc.RpcMethodHandler, request: Any, context: NativeContext
    ) -> None:
        call = context.call
        serialize: Callable[[Any], bytes] = handler.response_serializer or _raw
        try:
            async for message in handler.unary_stream(request, context):
                if not call.send(serialize(message)):
                    return  # the caller went away
        except _Aborted as aborted:
            call.finish(aborted.code.value[0], aborted.details)
            return
        except asyncio.CancelledError:
            return  # the caller went away, or the port stops
        except Exception:
            log.exception("%s from %s failed", call.method, call.peer)
            call.finish(_INTERNAL, "internal error")
            return
        finally:
            self._streams.pop(call.id, None)
        call.finish(_OK, "")


async def _resume(coro: Coroutine[Any, Any, None], waiting: Any) -> None:
    """Drive on a coroutine that `_run_eagerly` began and that is suspended on `waiting` (the
    future it awaits, or None for a bare yield), as a task would have."""
    while True:
        try:
            if waiting is None:
                await asyncio.sleep(0)
            else:
                await asyncio.wait((waiting,))
        except asyncio.CancelledError as cancelled:  # the port stops: cancel it where it waits
            if waiting is not None:
                waiting.cancel()
            try:
                waiting = coro.throw(cancelled)
            except StopIteration:
                return
            continue
        try:
            waiting = coro.send(None)
        except StopIteration:
            return


def _raw(data: Any) -> Any:
    return data
