"""The one front door, on real sockets: relays bytes, maps each relayed connection's loopback port
to what it learned, forgets the mapping before the internal connection closes, and bounds what
callers may hold (caps per source and in total, handshake and idle deadlines)."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
from cryptography.hazmat.primitives import serialization

from meshward_common.front_door import DoorLimits, FrontDoor, PeerTable, loopback_port
from meshward_common.svid import pem_of
from meshward_common.tls_files import load_cert_chain_pem
from tests.sidecar_tls.testca import MiniCA

DEADLINE = 30.0


@dataclass
class Upstream:
    """The internal server: echoes, and records for every connection what the door's peer table
    said about it at the moment the door's side of that connection reached end of file."""

    door: FrontDoor[str] | None = None
    at_eof: list[str | None] = field(default_factory=list)
    server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
        assert self.door is not None
        self.at_eof.append(self.door.peers.lookup(f"ipv4:127.0.0.1:{peer[1]}"))
        writer.close()


async def _door(
    limits: DoorLimits, tls: ssl.SSLContext | None = None
) -> tuple[FrontDoor[str], Upstream, int]:
    upstream = Upstream()
    door = FrontDoor(
        await upstream.start(),
        lambda t: f"caller {t.get_extra_info('peername')[0]}",
        ssl_context=tls,
        limits=limits,
    )
    upstream.door = door
    return door, upstream, await door.start_tcp("127.0.0.1", 0)


@pytest.fixture
async def closing() -> AsyncIterator[list[FrontDoor[str]]]:
    doors: list[FrontDoor[str]] = []
    yield doors
    for door in doors:
        await door.close()


async def _connect(
    port: int, source: str = "127.0.0.1"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=sock)


async def _echoes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    writer.write(b"ping")
    try:
        return await asyncio.wait_for(reader.read(4), DEADLINE) == b"ping"
    except ConnectionError:
        return False


async def _closed_by_door(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), DEADLINE) == b""
    except ConnectionError:
        return True


async def _until(still_waiting: Callable[[], object]) -> None:
    """Wait while `still_waiting()` holds, at most DEADLINE seconds (generous: a loaded machine)."""
    for _ in range(int(DEADLINE / 0.01)):
        if not still_waiting():
            return
        await asyncio.sleep(0.01)


def test_loopback_port_reads_only_ipv4_loopback_peers() -> None:
    assert loopback_port("ipv4:127.0.0.1:40000") == 40000
    for peer in ("ipv4:127.0.0.2:40000", "ipv6:[::1]:40000", "unix:", "ipv4:127.0.0.1:x"):
        assert loopback_port(peer) is None
    table: PeerTable[str] = PeerTable()
    table.register(40000, "a")
    assert table.lookup("ipv4:127.0.0.1:40000") == "a"
    assert table.lookup("ipv4:127.0.0.1:40001") is None  # a miss is None, for every caller alike


async def test_relays_and_forgets_the_mapping_before_the_internal_connection_closes(
    closing: list[FrontDoor[str]],
) -> None:
    door, upstream, port = await _door(DoorLimits())
    closing.append(door)
    reader, writer = await _connect(port)
    assert await _echoes(reader, writer)
    assert len(door.peers) == 1
    writer.close()
    await _until(lambda: not upstream.at_eof)
    # When the internal connection ended, its port no longer named the caller: a process that
    # binds that port next cannot inherit the caller's identity.
    assert upstream.at_eof == [None]
    assert len(door.peers) == 0
    assert door.connections == 0


async def test_caps_per_source_and_in_total(
    closing: list[FrontDoor[str]], caplog: pytest.LogCaptureFixture
) -> None:
    door, _, port = await _door(DoorLimits(max_per_source=2, max_connections=3))
    closing.append(door)
    with caplog.at_level(logging.WARNING, logger="meshward_common.front_door"):
        first = [await _connect(port, "127.0.0.2") for _ in range(2)]
        assert all([await _echoes(*c) for c in first])
        over, _ = await _connect(port, "127.0.0.2")
        assert await _closed_by_door(over)  # the third from one source
        other = await _connect(port, "127.0.0.3")
        assert await _echoes(*other)  # another source still gets in...
        full, _ = await _connect(port, "127.0.0.4")
        assert await _closed_by_door(full)  # ...until the door holds its total
        first[0][1].close()
        await _until(lambda: door.connections > 2)
        again = await _connect(port, "127.0.0.2")
        assert await _echoes(*again)  # a freed slot is usable again
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "front door: connection from 127.0.0.2 refused: 127.0.0.2 holds 2 connections (the cap per source)",
        "front door: connection from 127.0.0.4 refused: the door holds 3 connections (its cap)",
    ]


async def test_a_caller_that_sends_nothing_is_closed_after_the_idle_timeout(
    closing: list[FrontDoor[str]],
) -> None:
    door, _, port = await _door(DoorLimits(idle_timeout=0.5))
    closing.append(door)
    silent, _ = await _connect(port)
    assert await _closed_by_door(silent)
    assert door.connections == 0


async def test_a_tls_handshake_that_never_starts_is_closed(closing: list[FrontDoor[str]]) -> None:
    ca = MiniCA.create()
    identity = ca.issue("spiffe://cluster.local/meshward/control-plane")
    key_pem = identity.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    load_cert_chain_pem(tls, pem_of(identity.chain), key_pem)
    door, _, port = await _door(DoorLimits(handshake_timeout=0.5), tls)
    closing.append(door)
    stalled, _ = await _connect(port)  # TCP only: no ClientHello ever
    assert await _closed_by_door(stalled)
    await _until(lambda: door.connections)
    assert door.connections == 0
    client = ssl.create_default_context(cadata=pem_of([ca.cert]).decode())
    client.check_hostname = False
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
    assert await _echoes(reader, writer)  # and a real TLS client is relayed
    assert (
        door.peers.lookup(f"ipv4:127.0.0.1:{next(iter(door.peers._by_port))}") == "caller 127.0.0.1"
    )
    writer.close()
