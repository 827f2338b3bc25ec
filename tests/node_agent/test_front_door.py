"""The front door's pieces: the peer table the servicer trusts, and claiming the socket path."""

from __future__ import annotations

import socket

import pytest

from meshward_common.errors import ConfigError, PermissionDenied
from node_agent.attestation import PeerFacts
from node_agent.front_door import PeerTable, prepare_socket_path

FACTS = PeerFacts(pid=10, uid=1337, gid=1337, netns=(4, 4026532000))


def test_registered_port_maps_to_its_facts():
    table = PeerTable()
    table.register(40000, FACTS)
    assert table.lookup_peer("ipv4:127.0.0.1:40000") == FACTS


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
        table.lookup_peer(peer)


def test_failed_attestation_and_closed_connections_are_denied():
    table = PeerTable()
    table.register(40000, None)
    with pytest.raises(PermissionDenied, match="could not be attested"):
        table.lookup_peer("ipv4:127.0.0.1:40000")
    table.register(40001, FACTS)
    table.unregister(40001)
    with pytest.raises(PermissionDenied):
        table.lookup_peer("ipv4:127.0.0.1:40001")
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
