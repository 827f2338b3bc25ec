"""A scripted gRPC server on a Unix socket (h2, server side) for the sidecar's stream client tests:
it answers every call with the replies and ending a test chooses, including broken ones a real
grpc server would never send (malformed messages, odd statuses, dropped connections)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import struct
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.exceptions


@dataclass
class Script:
    """What the server does per call: send `messages`, then end per `ending`:
    "ok" (grpc-status 0), "status" (`status`/`message` trailers), "trailers-only" (refuse at once),
    "drop" (close the socket), "hold" (keep the stream open), "no-trailers" (END_STREAM on DATA)."""

    messages: list[bytes] = field(default_factory=list)
    ending: str = "ok"
    status: int = 0
    message: str = ""


@dataclass
class Call:
    path: str
    headers: dict[str, str]
    request: bytes


class FakeGrpcServer:
    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self.script = Script()
        self.calls: list[Call] = []
        self._server: asyncio.AbstractServer | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._handle, str(self.socket_path))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in self._writers:
                writer.close()
            await self._server.wait_closed()
            self._server = None
        self.socket_path.unlink(missing_ok=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        headers: dict[int, dict[str, str]] = {}
        bodies: dict[int, bytes] = {}
        outgoing: dict[int, bytearray] = {}  # reply bytes waiting for flow-control credit
        try:
            while data := await reader.read(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        headers[event.stream_id] = {str(k): str(v) for k, v in event.headers}
                        bodies[event.stream_id] = b""
                    elif isinstance(event, h2.events.DataReceived):
                        bodies[event.stream_id] += event.data
                        conn.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                    elif isinstance(event, h2.events.StreamEnded):
                        sid = event.stream_id
                        self.calls.append(
                            Call(headers[sid][":path"], headers[sid], bodies[sid][5:])
                        )
                        outgoing[sid] = self._start_reply(conn, sid)
                for sid in list(outgoing):
                    if not self._flush(conn, sid, outgoing):
                        writer.write(conn.data_to_send())
                        writer.close()
                        return
                writer.write(conn.data_to_send())
                await writer.drain()
        except (ConnectionError, h2.exceptions.ProtocolError):
            pass
        finally:
            writer.close()

    def _start_reply(self, conn: h2.connection.H2Connection, sid: int) -> bytearray:
        s = self.script
        if s.ending == "trailers-only":
            conn.send_headers(
                sid,
                [(":status", "200"), ("content-type", "application/grpc"),
                 ("grpc-status", str(s.status)), ("grpc-message", s.message)],
                end_stream=True,
            )  # fmt: skip
            return bytearray()
        conn.send_headers(sid, [(":status", "200"), ("content-type", "application/grpc")])
        return bytearray(b"".join(struct.pack(">BI", 0, len(m)) + m for m in s.messages))

    def _flush(
        self, conn: h2.connection.H2Connection, sid: int, outgoing: dict[int, bytearray]
    ) -> bool:
        """Send what the window allows; once all is sent, end per the script (False: drop)."""
        pending = outgoing[sid]
        while pending:
            size = min(
                len(pending), conn.local_flow_control_window(sid), conn.max_outbound_frame_size
            )
            if size <= 0:
                return True  # wait for the client's WINDOW_UPDATE
            conn.send_data(sid, bytes(pending[:size]))
            del pending[:size]
        del outgoing[sid]
        s = self.script
        if s.ending == "drop":
            return False
        if s.ending == "no-trailers":
            conn.end_stream(sid)
        elif s.ending == "ok":
            conn.send_headers(sid, [("grpc-status", "0")], end_stream=True)
        elif s.ending == "status":
            conn.send_headers(
                sid, [("grpc-status", str(s.status)), ("grpc-message", s.message)], end_stream=True
            )
        return True


@contextlib.asynccontextmanager
async def fake_grpc_server() -> AsyncIterator[FakeGrpcServer]:
    directory = Path(tempfile.mkdtemp(prefix="mwfg-"))
    server = FakeGrpcServer(directory / "agent.sock")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
        shutil.rmtree(directory, ignore_errors=True)
