"""A minimal gRPC server-streaming client over HTTP/2 on a Unix socket, built on `h2`.

The sidecar needs exactly two calls from the node agent (SPIFFE `FetchX509SVID` and
`meshward.v1.MeshDiscovery/StreamMeshState`), both "one request, a stream of replies". The grpc
package costs ~20 MB of RSS per sidecar for that; this module is the few hundred lines of the
protocol those calls use: HEADERS + one length-prefixed request, then length-prefixed replies, then
trailers carrying `grpc-status` / `grpc-message` (or a trailers-only reply for early refusals).

Messages are bytes in and bytes out: callers encode and decode them (generated protobuf classes).
`follow_stream` adds what every caller wants: reconnect with backoff when the agent goes away.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import AsyncIterator, Callable, Sequence
from urllib.parse import unquote

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from meshward_common.errors import MeshwardError
from meshward_common.limits import MESH_STATE_MESSAGE_LIMIT

log = logging.getLogger(__name__)

# The SPIFFE Workload API's required header (the agent also requires it on the mesh state stream).
WORKLOAD_API_METADATA = (("workload.spiffe.io", "true"),)
MAX_MESSAGE_BYTES = MESH_STATE_MESSAGE_LIMIT  # the largest message on the stream: a mesh state
_PREFIX = struct.Struct(">BI")  # compressed flag, message length
# The gRPC status codes by number (grpc/doc/statuscodes.md), to name them in errors and logs.
STATUS_NAMES = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
    "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
)  # fmt: skip


class GrpcCallError(MeshwardError):
    """A gRPC call ended without success: a status from the server, or a broken transport.

    `code` is the gRPC status name (`UNAVAILABLE` for transport failures)."""

    def __init__(self, method: str, code: str, message: str) -> None:
        self.method = method
        self.code = code
        self.message = message
        super().__init__(f"{method}: {code}: {message}")


def status_name(value: str) -> str:
    return STATUS_NAMES[int(value)] if value.isdigit() and int(value) < len(STATUS_NAMES) else value


def frame_message(message: bytes) -> bytes:
    return _PREFIX.pack(0, len(message)) + message


class MessageReader:
    """Splits one call's gRPC DATA byte stream into messages (pure: bytes in, messages out)."""

    def __init__(self, method: str) -> None:
        self._method = method
        self._buffer = bytearray()
        self.status_seen = False  # set once an OK grpc-status arrived (trailers)

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        out: list[bytes] = []
        while len(self._buffer) >= _PREFIX.size:
            compressed, length = _PREFIX.unpack_from(self._buffer)
            if compressed:  # we never offer grpc-accept-encoding, so a server must not compress
                raise GrpcCallError(self._method, "INTERNAL", "server sent a compressed message")
            if length > MAX_MESSAGE_BYTES:
                raise GrpcCallError(
                    self._method, "RESOURCE_EXHAUSTED", f"message of {length} bytes is too large"
                )
            if len(self._buffer) < _PREFIX.size + length:
                break
            out.append(bytes(self._buffer[_PREFIX.size : _PREFIX.size + length]))
            del self._buffer[: _PREFIX.size + length]
        return out

    @property
    def pending(self) -> int:
        return len(self._buffer)


def _check_status(method: str, headers: dict[str, str]) -> None:
    """Raise for a non-OK `grpc-status` (trailers or a trailers-only reply)."""
    code = headers.get("grpc-status")
    if code is None:
        raise GrpcCallError(method, "UNKNOWN", "stream ended without grpc-status")
    if code != "0":
        message = unquote(headers.get("grpc-message", "")) or "(no message)"
        raise GrpcCallError(method, status_name(code), message)


async def server_stream(
    socket_path: str,
    method: str,
    request: bytes,
    metadata: Sequence[tuple[str, str]] = (),
    *,
    connect_timeout: float = 5.0,
) -> AsyncIterator[bytes]:
    """Call `method` ("/package.Service/Method") once; yield each reply message's bytes. Ends
    quietly on grpc-status 0; raises `GrpcCallError` for any other status or a broken transport."""
    path = socket_path.removeprefix("unix://").removeprefix("unix:")
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), connect_timeout)
    except (OSError, TimeoutError) as exc:
        raise GrpcCallError(method, "UNAVAILABLE", f"cannot connect to {path}: {exc}") from exc
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    )
    try:
        conn.initiate_connection()
        stream_id = conn.get_next_available_stream_id()
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", method),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *metadata,
        ]
        conn.send_headers(stream_id, headers)
        conn.send_data(stream_id, frame_message(request), end_stream=True)
        writer.write(conn.data_to_send())
        await writer.drain()
        messages = MessageReader(method)
        while True:
            data = await reader.read(65536)
            if not data:
                raise GrpcCallError(method, "UNAVAILABLE", "connection closed by the server")
            try:
                events = conn.receive_data(data)
            except h2.exceptions.ProtocolError as exc:
                raise GrpcCallError(method, "INTERNAL", f"HTTP/2 protocol error: {exc}") from exc
            for event in events:
                for message in _on_event(method, conn, stream_id, event, messages):
                    yield message
                if isinstance(event, h2.events.StreamEnded) and event.stream_id == stream_id:
                    if not messages.status_seen:  # END_STREAM on DATA: no trailers, no status
                        raise GrpcCallError(method, "UNKNOWN", "stream ended without grpc-status")
                    return  # the status was OK (any other raised in _on_event)
            outgoing = conn.data_to_send()
            if outgoing:
                writer.write(outgoing)
                await writer.drain()
    except ConnectionError as exc:
        raise GrpcCallError(method, "UNAVAILABLE", f"connection lost: {exc}") from exc
    finally:
        writer.close()


def _on_event(
    method: str,
    conn: h2.connection.H2Connection,
    stream_id: int,
    event: h2.events.Event,
    messages: MessageReader,
) -> list[bytes]:
    """One h2 event of our call: reply messages to yield, or a `GrpcCallError`."""
    if isinstance(event, h2.events.ResponseReceived):
        headers = _as_dict(event.headers)
        if headers.get(":status") != "200":
            raise GrpcCallError(method, "UNAVAILABLE", f"HTTP status {headers.get(':status')}")
        if "grpc-status" in headers:  # trailers-only reply: refused before any message
            _check_status(method, headers)
            messages.status_seen = True
        elif not headers.get("content-type", "").startswith("application/grpc"):
            raise GrpcCallError(method, "UNKNOWN", "reply is not application/grpc")
    elif isinstance(event, h2.events.DataReceived):
        # Credit the window back at once: messages are consumed as they arrive.
        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        return messages.feed(event.data)
    elif isinstance(event, h2.events.TrailersReceived):
        if messages.pending:
            raise GrpcCallError(method, "INTERNAL", "stream ended inside a message")
        _check_status(method, _as_dict(event.headers))
        messages.status_seen = True
    elif isinstance(event, h2.events.StreamReset) and event.stream_id == stream_id:
        raise GrpcCallError(
            method, "UNAVAILABLE", f"stream reset (HTTP/2 error {event.error_code})"
        )
    elif isinstance(event, h2.events.ConnectionTerminated):
        raise GrpcCallError(method, "UNAVAILABLE", "server closed the connection (GOAWAY)")
    return []


def _as_dict(headers: object) -> dict[str, str]:
    return {str(k): str(v) for k, v in headers}  # type: ignore[attr-defined]


async def follow_stream(
    socket_path: str,
    method: str,
    request: Callable[[], bytes],
    on_message: Callable[[bytes], None],
    metadata: Sequence[tuple[str, str]] = (),
    *,
    what: str,
    initial_backoff: float = 0.2,
    max_backoff: float = 5.0,
) -> None:
    """Run forever (until cancelled): call, hand each message to `on_message`, and reconnect with
    exponential backoff whenever the stream fails or ends. `request()` is asked anew per attempt
    (e.g. to resend the last version seen). The backoff resets once a message arrives."""
    backoff = initial_backoff
    while True:
        try:
            async for message in server_stream(socket_path, method, request(), metadata):
                backoff = initial_backoff
                on_message(message)
            log.warning("%s stream ended; reconnecting", what)
        except GrpcCallError as exc:
            log.warning(
                "%s stream from %s failed: %s; retrying in %.1fs", what, socket_path, exc, backoff
            )
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, max_backoff)
