"""The front door's pieces: the peer table the servicer trusts, and claiming the socket path."""

from __future__ import annotations

import asyncio
import socket

import pytest

from meshward_common.errors import ConfigError, PermissionDenied
from node_agent.attestation import PeerFacts
from node_agent.front_door import (
    FrontDoor,
    PeerTable,
    Unattested,
    caller_facts,
    prepare_socket_path,
)

FACTS = PeerFacts(pid=10, uid=1337, gid=1337, netns=(4, 4026532000))


def test_registered_port_maps_to_its_facts():
    table = PeerTable()
    table.register(40000, FACTS)
    assert caller_facts(table, "ipv4:127.0.0.1:40000") == FACTS


@pytest.mark.parametrize(
    "peer",
    [
        "ipv4:127.0.0.1:40001",  # not relayed by us
        "ipv4:127.0.0.2:40000",  # another address
        "ipv6:[::1]:40000",
        "unix:",
        "ipv4:127.0.0.1:abc",
    ],
)
def test_anything_else_is_permission_denied(peer):
    table = PeerTable()
    table.register(40000, FACTS)
    with pytest.raises(PermissionDenied):
        caller_facts(table, peer)


def test_failed_attestation_and_closed_connections_are_denied():
    table = PeerTable()
    table.register(40000, Unattested("pid gone"))
    with pytest.raises(PermissionDenied, match="could not be attested"):
        caller_facts(table, "ipv4:127.0.0.1:40000")
    table.register(40001, FACTS)
    table.unregister(40001)
    with pytest.raises(PermissionDenied):
        caller_facts(table, "ipv4:127.0.0.1:40001")
    assert len(table) == 1


def test_stale_socket_of_a_dead_agent_is_replaced(tmp_path):
    path = tmp_path / "agent.sock"
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens: what SIGKILL leaves behind
    prepare_socket_path(path)
    assert not path.exists()


def test_live_socket_is_refused_and_kept(tmp_path):
    path = tmp_path / "agent.sock"
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(str(path))
        live.listen(1)
        with pytest.raises(ConfigError, match="in use by another process"):
            prepare_socket_path(path)
        assert path.is_socket()


def test_non_socket_file_is_refused(tmp_path):
    path = tmp_path / "agent.sock"
    path.write_text("important")
    with pytest.raises(ConfigError, match="not a socket"):
        prepare_socket_path(path)
    assert path.read_text() == "important"


def test_socket_directory_is_created(tmp_path):
    path = tmp_path / "run" / "meshward" / "node-1" / "agent.sock"
    prepare_socket_path(path)
    assert path.parent.is_dir()


class WatchedPeers(PeerTable):
    """Records, when a port is forgotten, whether the door's internal connection still holds it
    (then no other process can bind it yet) or has already let it go."""

    def __init__(self) -> None:
        super().__init__()
        self.freed_before_forgotten: list[int] = []
        self.held_when_forgotten: list[int] = []

    def unregister(self, port: int) -> None:
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a squatter would
        try:
            probe.bind(("127.0.0.1", port))
            self.freed_before_forgotten.append(port)
        except OSError:
            self.held_when_forgotten.append(port)
        finally:
            probe.close()
        super().unregister(port)


@pytest.mark.parametrize("who_closes", ["caller", "server"])
async def test_the_mapping_is_forgotten_before_the_port_is_freed(tmp_path, who_closes):
    """In the gap between closing the internal connection and forgetting its port, a process
    that bound that port would inherit the caller's facts: the door forgets first."""
    peers = WatchedPeers()

    async def internal_server(reader, writer):
        if who_closes == "server":
            await reader.read(1)
            writer.close()
            return
        while await reader.read(1024):
            pass
        writer.close()

    server = await asyncio.start_server(internal_server, "127.0.0.1", 0)
    door = FrontDoor(tmp_path / "agent.sock", server.sockets[0].getsockname()[1], peers)
    await door.start()
    try:
        reader, writer = await asyncio.open_unix_connection(str(tmp_path / "agent.sock"))
        writer.write(b"x")
        await writer.drain()
        if who_closes == "caller":
            for _ in range(3000):
                if len(peers):
                    break
                await asyncio.sleep(0.01)
            writer.close()
        else:
            assert await asyncio.wait_for(reader.read(), 30) == b""
        for _ in range(3000):
            if peers.freed_before_forgotten or peers.held_when_forgotten:
                break
            await asyncio.sleep(0.01)
    finally:
        await door.stop()
        server.close()
    assert peers.freed_before_forgotten == []
    assert len(peers.held_when_forgotten) == 1
