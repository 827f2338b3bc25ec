"""HOST:PORT: one parser for the CA's listen address, the agent's CA address and the sidecar's
flags.

The copies disagreed on brackets (the CA stripped them, the agent and the sidecar kept them) and
on an unbracketed IPv6 literal (all took `::1:80` as host `::1`). The meaning kept is Go's
`net.SplitHostPort`, which Istio's and Kubernetes' address flags use.
"""

from __future__ import annotations

import pytest

from ca.config import parse_listen
from meshward_common.addresses import join_host_port, parse_host_port
from meshward_common.errors import ConfigError
from node_agent.config import build_config as agent_config


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:15012", ("127.0.0.1", 15012)),
        ("[::1]:15012", ("::1", 15012)),
        ("ca.example:443", ("ca.example", 443)),
        ("localhost:0", ("localhost", 0)),
        ("10.0.0.1:65535", ("10.0.0.1", 65535)),
    ],
)
def test_host_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text, "--x") == expected
    assert parse_host_port(join_host_port(*expected), "--x") == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "localhost",
        ":80",
        "host:",
        "host:http",
        "host:65536",
        "host:-1",
        "::1:80",
        "[::1]",
        "[a]b:1",
    ],
)
def test_bad_host_port_names_the_option(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^--x: .* is not HOST:PORT"):
        parse_host_port(text, "--x")


def test_port_zero_only_where_listening() -> None:
    assert parse_host_port("127.0.0.1:0", "--listen") == ("127.0.0.1", 0)
    with pytest.raises(ConfigError, match="--ca-address"):
        parse_host_port("127.0.0.1:0", "--ca-address", port_zero=False)


def test_ca_and_agent_read_addresses_alike() -> None:
    assert parse_listen("[::1]:15012") == ("::1", 15012)
    assert agent_config({"node": "n", "state_dir": "/s", "ca_address": "[::1]:15012"}, {})
    for text in ("::1:15012", "127.0.0.1:99999"):
        with pytest.raises(ConfigError, match="not HOST:PORT"):
            parse_listen(text)
        with pytest.raises(ConfigError, match="not HOST:PORT"):
            agent_config({"node": "n", "state_dir": "/s", "ca_address": text}, {})
