"""Plain HTTP/2 for the data-path tests, on the `h2` library: an h2c echo app (each request
answered with a JSON body of its head) and a raw client that can send what grpcio never would
(a malformed stream beside good ones) and sees every frame-level outcome (resets, GOAWAY)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events


async def h2_echo_app(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, goaway_after: int = 0
) -> None:
    """An h2c server: answers each request with JSON {"method", "path", "headers"}. With
    `goaway_after` N, the (N+1)th request gets GOAWAY naming the Nth stream as the last one
    processed, and is never answered (as a server shutting down does)."""
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
    )
    conn.initiate_connection()
    writer.write(conn.data_to_send())
    served: list[int] = []
    heads: dict[int, list[tuple[str, str]]] = {}
    try:
        while data := await reader.read(65536):
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    heads[event.stream_id] = list(event.headers)
                elif isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    sid = event.stream_id
                    if goaway_after and len(served) >= goaway_after:
                        conn.close_connection(last_stream_id=served[-1])
                        continue
                    served.append(sid)
                    headers = heads.pop(sid)
                    body = json.dumps(
                        {
                            "method": dict(headers)[":method"],
                            "path": dict(headers)[":path"],
                            "headers": {k: v for k, v in headers if not k.startswith(":")},
                        }
                    ).encode()
                    conn.send_headers(
                        sid,
                        [
                            (":status", "200"),
                            ("content-type", "application/json"),
                            ("content-length", str(len(body))),
                        ],
                    )
                    conn.send_data(sid, body, end_stream=True)
            writer.write(conn.data_to_send())
            await writer.drain()
    except (ConnectionError, h2.exceptions.ProtocolError):
        pass
    finally:
        writer.close()


@dataclass
class Outcome:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    reset: int | None = None  # the RST_STREAM error code, if reset
    ended: bool = False


class RawH2Client:
    """An h2c client on one connection; `request` sends a head as given (no validation)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(
                client_side=True,
                header_encoding="utf-8",
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
            )
        )
        self.conn.initiate_connection()
        self.outcomes: dict[int, Outcome] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None

    @classmethod
    async def connect(cls, port: int) -> RawH2Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    def request(
        self,
        path: str,
        extra: list[tuple[str, str]] | None = None,
        *,
        method: str = "GET",
        body: bytes = b"",
    ) -> int:
        sid = self.conn.get_next_available_stream_id()
        head = [(":method", method), (":scheme", "http"), (":authority", "server"), (":path", path)]
        self.conn.send_headers(sid, head + (extra or []), end_stream=not body)
        if body:
            self.conn.send_data(sid, body, end_stream=True)
        self.outcomes[sid] = Outcome()
        self.writer.write(self.conn.data_to_send())
        return sid

    async def settle(self, within_s: float = 10.0) -> dict[int, Outcome]:
        """Read until every stream sent has ended or been reset (or the connection went)."""

        async def pump() -> None:
            while not all(o.ended or o.reset is not None for o in self.outcomes.values()):
                data = await self.reader.read(65536)
                if not data:
                    return
                for event in self.conn.receive_data(data):
                    self._on(event)
                self.writer.write(self.conn.data_to_send())

        await asyncio.wait_for(pump(), within_s)
        return self.outcomes

    async def until_closed(self, within_s: float = 10.0) -> None:
        """Read until the sidecar closes the connection (events recorded as they come)."""

        async def pump() -> None:
            while data := await self.reader.read(65536):
                for event in self.conn.receive_data(data):
                    self._on(event)

        await asyncio.wait_for(pump(), within_s)

    def _on(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            headers = dict(event.headers)
            self.outcomes[event.stream_id].status = int(headers.pop(":status"))
            self.outcomes[event.stream_id].headers = headers
        elif isinstance(event, h2.events.DataReceived):
            self.outcomes[event.stream_id].body += event.data
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            self.outcomes[event.stream_id].ended = True
        elif isinstance(event, h2.events.StreamReset):
            self.outcomes[event.stream_id].reset = int(event.error_code)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = event

    def close(self) -> None:
        self.writer.close()
