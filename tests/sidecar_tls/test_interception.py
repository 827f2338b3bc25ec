"""istio-init's rules: the golden rule set, option validation, and real redirects in real pods."""

from __future__ import annotations

import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshward.pods import Pod, PodNetwork
from meshward_common.capture_flags import parse_cidr_list, parse_port_list
from meshward_common.errors import ConfigError
from sidecar_tls.interception.iptables import (
    ISTIO_CHAINS,
    InterceptionError,
    InterceptionOptions,
    apply_rules,
    parse_nat_rules,
    read_nat_table,
    render_rules,
)
from tests.harness.pods import add_intercepted_pod, pod_network

GOLDEN = Path(__file__).parent / "golden"
PREFIX = "mwic"
SUBNET = "10.213.32.0/24"
APP_UID = 1000

# ---------------------------------------------------------------------------------------------
# Pure: the rules themselves


def test_default_rules_are_istios_rule_set() -> None:
    golden = parse_nat_rules((GOLDEN / "istio_iptables_default.txt").read_text())
    assert parse_nat_rules(render_rules()) == golden
    assert parse_nat_rules(render_rules(InterceptionOptions())) == golden


def test_exclusions_add_return_rules_where_istio_puts_them() -> None:
    options = InterceptionOptions(
        exclude_outbound_ports=(25, 5432),
        exclude_outbound_cidrs=("10.96.0.0/12", "192.168.7.7"),
    )
    golden = parse_nat_rules((GOLDEN / "istio_iptables_excludes.txt").read_text())
    assert parse_nat_rules(render_rules(options)) == golden


def test_one_excluded_port_is_a_plain_dport_rule_for_tcp_and_udp() -> None:
    chain = render_rules(InterceptionOptions(exclude_outbound_ports=(22,))).splitlines()
    first = chain.index("-A ISTIO_OUTPUT -p tcp --dport 22 -j RETURN")
    assert chain[first + 1] == "-A ISTIO_OUTPUT -p udp --dport 22 -j RETURN"
    assert chain[first + 2] == "-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN"


def test_more_than_15_excluded_ports_are_split_across_multiport_rules() -> None:
    ports = tuple(range(1000, 1020))
    text = render_rules(InterceptionOptions(exclude_outbound_ports=ports))
    first = ",".join(map(str, ports[:15]))
    rest = ",".join(map(str, ports[15:]))
    assert f"-A ISTIO_OUTPUT -p tcp -m multiport --dports {first} -j RETURN" in text
    assert f"-A ISTIO_OUTPUT -p udp -m multiport --dports {rest} -j RETURN" in text
    assert text.count("multiport") == 4


def test_order_within_a_chain_matters_to_the_comparison() -> None:
    text = render_rules()
    lines = text.splitlines()
    uid_return = lines.index("-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN")
    catch_all = lines.index("-A ISTIO_OUTPUT -j ISTIO_REDIRECT")
    lines[uid_return], lines[catch_all] = lines[catch_all], lines[uid_return]
    assert parse_nat_rules("\n".join(lines)) != parse_nat_rules(text)


def test_a_missing_rule_breaks_the_comparison() -> None:
    text = render_rules().replace("-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN\n", "")
    golden = parse_nat_rules((GOLDEN / "istio_iptables_default.txt").read_text())
    assert parse_nat_rules(text) != golden


def test_render_is_a_whole_nat_table_for_iptables_restore() -> None:
    lines = render_rules().splitlines()
    assert lines[0] == "*nat"
    assert lines[-1] == "COMMIT"
    for chain in ISTIO_CHAINS:
        assert f":{chain} - [0:0]" in lines


def test_custom_ports_and_ids_are_rendered() -> None:
    text = render_rules(
        InterceptionOptions(
            proxy_uid=2000,
            proxy_gid=2001,
            outbound_port=16001,
            inbound_port=16006,
            exclude_inbound_ports=(22,),
        )
    )
    assert "--to-ports 16001" in text
    assert "--to-ports 16006" in text
    assert "-m owner --uid-owner 2000 -j RETURN" in text
    assert "-m owner --gid-owner 2001 -j RETURN" in text
    assert "--dport 22 -j RETURN" in text
    assert "1337" not in text
    assert "--dport 15021" not in text


def test_spelling_of_iptables_save_compares_equal() -> None:
    # iptables-save adds `-m tcp` and reorders matches; the meaning is the same rule.
    ours = "-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT"
    saved = "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT"
    assert parse_nat_rules(ours) == parse_nat_rules(saved)
    negated_differently = saved.replace("! -d 127.0.0.1/32", "-d 127.0.0.1/32")
    assert parse_nat_rules(ours) != parse_nat_rules(negated_differently)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"outbound_port": 0}, "outbound_port"),
        ({"inbound_port": 65536}, "inbound_port"),
        ({"proxy_uid": -1}, "proxy_uid"),
        ({"proxy_gid": True}, "proxy_gid"),
        ({"exclude_inbound_ports": (15021, 70000)}, "exclude_inbound_ports"),
        ({"exclude_outbound_ports": ("80",)}, "exclude_outbound_ports"),
        ({"exclude_outbound_cidrs": ("10.0.0.0/33",)}, "exclude_outbound_cidrs"),
        ({"exclude_outbound_cidrs": ("not-a-cidr",)}, "exclude_outbound_cidrs"),
        ({"exclude_outbound_cidrs": ("fd00::/8",)}, "IPv6"),
    ],
)
def test_bad_options_are_refused_with_the_field_named(
    kwargs: dict[str, object], needle: str
) -> None:
    with pytest.raises(ConfigError, match=needle):
        InterceptionOptions(**kwargs)  # type: ignore[arg-type]


def test_options_accept_lists_and_stay_hashable() -> None:
    as_lists: dict[str, Any] = {
        "exclude_outbound_ports": [25],
        "exclude_outbound_cidrs": ["10.0.0.0/8"],
    }
    options = InterceptionOptions(**as_lists)
    assert options.exclude_outbound_ports == (25,)
    assert hash(options) == hash(
        InterceptionOptions(exclude_outbound_ports=(25,), exclude_outbound_cidrs=("10.0.0.0/8",))
    )


def test_included_inbound_ports_capture_only_those_ports() -> None:
    # istio-iptables -b 32000,31000 (its inbound-ports-include golden): no exclusions, no catch-all.
    chains = parse_nat_rules(
        render_rules(InterceptionOptions(include_inbound_ports=(32000, 31000)))
    )
    assert (
        chains["ISTIO_INBOUND"]
        == parse_nat_rules(
            "-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN\n"
            "-A ISTIO_INBOUND -p tcp --dport 32000 -j ISTIO_IN_REDIRECT\n"
            "-A ISTIO_INBOUND -p tcp --dport 31000 -j ISTIO_IN_REDIRECT\n"
        )["ISTIO_INBOUND"]
    )
    assert len(chains["PREROUTING"]) == 1


def test_no_included_inbound_ports_hooks_nothing_into_prerouting() -> None:
    chains = parse_nat_rules(render_rules(InterceptionOptions(include_inbound_ports=())))
    assert "PREROUTING" not in chains


def test_included_outbound_cidrs_redirect_only_those_and_return_the_rest() -> None:
    # istio-iptables -i 9.9.0.0/16 -x 1.1.0.0/16 (its ip-range golden, without the DNS rules).
    text = render_rules(
        InterceptionOptions(
            include_outbound_cidrs=("9.9.0.0/16",), exclude_outbound_cidrs=("1.1.0.0/16",)
        )
    )
    tail = text.splitlines()[-5:-1]
    assert tail == [
        "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
        "-A ISTIO_OUTPUT -d 1.1.0.0/16 -j RETURN",
        "-A ISTIO_OUTPUT -d 9.9.0.0/16 -j ISTIO_REDIRECT",
        "-A ISTIO_OUTPUT -j RETURN",
    ]
    nothing = render_rules(InterceptionOptions(include_outbound_cidrs=()))
    assert "ISTIO_REDIRECT\n" not in nothing.split("-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN")[1]


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("*", None), ("", ()), ("15090, 15021", (15090, 15021)), ("80,*", None)],
)
def test_istio_iptables_port_flags(text: str, parsed: tuple[int, ...] | None) -> None:
    assert parse_port_list(text, "-b") == parsed


def test_bad_flag_values_are_refused_with_the_flag() -> None:
    with pytest.raises(ConfigError, match="-b: 'http' is not a port number"):
        parse_port_list("http", "-b")
    with pytest.raises(ConfigError, match="include_outbound_cidrs entry"):
        InterceptionOptions(include_outbound_cidrs=("300.0.0.0/8",))
    assert parse_cidr_list("10.0.0.0/8,*", "-i") is None


# ---------------------------------------------------------------------------------------------
# Real namespaces, real iptables

# Listens on every port given; answers each connection with which port took it and the
# connection's original destination (SO_ORIGINAL_DST, what the sidecar reads), then closes.
LISTENER = r"""
import socket, struct, sys, threading
SO_ORIGINAL_DST = 80
def serve(sock, port):
    while True:
        conn, peer = sock.accept()
        try:
            raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            orig = "%s:%d" % (socket.inet_ntoa(raw[4:8]), struct.unpack("!H", raw[2:4])[0])
        except OSError:
            orig = "none"
        conn.sendall(("port=%d orig=%s\n" % (port, orig)).encode())
        conn.close()
socks = []
for port in map(int, sys.argv[1:]):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(16)
    socks.append((s, port))
for s, port in socks:
    threading.Thread(target=serve, args=(s, port), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

# Connects to host:port and prints the listener's one-line answer.
CLIENT = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
print(s.makefile().readline().strip())
"""


def start_listener(net: PodNetwork, pod: Pod, ports: list[int], uid: int) -> None:
    proc = net.spawn(
        pod,
        [sys.executable, "-c", LISTENER, *map(str, ports)],
        uid=uid,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 20)
    line = proc.stdout.readline() if ready else b""
    if line.strip() != b"ready":
        proc.kill()
        err = proc.stderr.read().decode() if proc.stderr else ""
        pytest.fail(f"listener in {pod.name} on {ports} did not start: {err}")


def connect_from(
    net: PodNetwork, pod: Pod, host: str, port: int, *, uid: int, gid: int | None = None
) -> str:
    done = net.run(pod, [sys.executable, "-c", CLIENT, host, str(port)], uid=uid, gid=gid)
    assert done.returncode == 0, f"connect {host}:{port} from {pod.name}: {done.stderr}"
    return done.stdout.strip()


def connect_from_host(host: str, port: int) -> str:
    done = subprocess.run(
        [sys.executable, "-c", CLIENT, host, str(port)],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert done.returncode == 0, f"connect {host}:{port} from host: {done.stderr}"
    return done.stdout.strip()


@pytest.fixture
def net() -> Iterator[PodNetwork]:
    with pod_network(PREFIX, SUBNET) as network:
        yield network


@pytest.mark.netns
def test_apply_loads_the_rendered_table_and_replaces_it_on_reapply(net: PodNetwork) -> None:
    pod = net.add_pod("rules")
    apply_rules(pod.netns)
    want = parse_nat_rules(render_rules())
    got = read_nat_table(pod.netns)
    assert {c: r for c, r in got.items() if r or c in ISTIO_CHAINS} == want
    # A second apply with other options replaces the table instead of appending to it.
    options = InterceptionOptions(
        exclude_outbound_ports=(25, 587), exclude_outbound_cidrs=("10.96.0.0/12",)
    )
    apply_rules(pod.netns, options)
    got = read_nat_table(pod.netns)
    assert got["ISTIO_OUTPUT"] == parse_nat_rules(render_rules(options))["ISTIO_OUTPUT"]
    assert len(got["PREROUTING"]) == 1


@pytest.mark.netns
def test_apply_to_a_missing_netns_fails_with_its_name(net: PodNetwork) -> None:
    with pytest.raises(InterceptionError, match="mwic-nosuchpod"):
        apply_rules("mwic-nosuchpod")


@pytest.mark.netns
def test_outbound_goes_to_15001_with_the_real_destination_and_1337_bypasses(
    net: PodNetwork,
) -> None:
    app = add_intercepted_pod(net, "app")
    dest = net.add_pod("dest")
    start_listener(net, app, [15001, 8080], uid=1337)
    start_listener(net, dest, [9080], uid=APP_UID)

    # The app's connection is captured by the sidecar port, which recovers the real destination.
    answer = connect_from(net, app, dest.ip, 9080, uid=APP_UID)
    assert answer == f"port=15001 orig={dest.ip}:9080"
    # The sidecar's own connections (uid 1337, or gid 1337) are not redirected.
    assert connect_from(net, app, dest.ip, 9080, uid=1337).startswith("port=9080 ")
    assert connect_from(net, app, dest.ip, 9080, uid=APP_UID, gid=1337).startswith("port=9080 ")
    # The app's calls to 127.0.0.1 stay local.
    assert connect_from(net, app, "127.0.0.1", 8080, uid=APP_UID).startswith("port=8080 ")
    # Without interception rules, nothing is redirected.
    assert connect_from(net, dest, dest.ip, 9080, uid=APP_UID).startswith("port=9080 ")


@pytest.mark.netns
def test_inbound_goes_to_15006_except_the_excluded_ports(net: PodNetwork) -> None:
    server = add_intercepted_pod(net, "server")
    client = net.add_pod("client")
    start_listener(net, server, [15006, 15021, 15020, 15090, 9080], uid=1337)

    assert connect_from(net, client, server.ip, 9080, uid=APP_UID) == (
        f"port=15006 orig={server.ip}:9080"
    )
    assert connect_from_host(server.ip, 9080) == f"port=15006 orig={server.ip}:9080"
    for port in (15021, 15020, 15090):
        assert connect_from(net, client, server.ip, port, uid=APP_UID) == (
            f"port={port} orig={server.ip}:{port}"
        )


@pytest.mark.netns
def test_sidecar_calling_its_own_pod_ip_takes_the_inbound_path(net: PodNetwork) -> None:
    pod = add_intercepted_pod(net, "self")
    start_listener(net, pod, [15001, 15006, 9080], uid=1337)
    # uid 1337 to the pod's own IP goes through lo and is sent to the inbound listener.
    assert connect_from(net, pod, pod.ip, 9080, uid=1337) == f"port=15006 orig={pod.ip}:9080"
    # The app calling its own IP over lo is left alone (the 'lo ! --uid-owner 1337' RETURN).
    assert connect_from(net, pod, pod.ip, 9080, uid=APP_UID).startswith("port=9080 ")


@pytest.mark.netns
def test_excluded_outbound_ports_and_cidrs_are_not_redirected(net: PodNetwork) -> None:
    excluded_host = net.add_pod("db", ip="10.213.32.200")
    other = net.add_pod("web")
    app = add_intercepted_pod(
        net,
        "app",
        options=InterceptionOptions(
            exclude_outbound_ports=(9443, 9444), exclude_outbound_cidrs=("10.213.32.200/32",)
        ),
    )
    start_listener(net, app, [15001], uid=1337)
    start_listener(net, excluded_host, [9080], uid=APP_UID)
    start_listener(net, other, [9080, 9443, 9444], uid=APP_UID)

    assert connect_from(net, app, other.ip, 9443, uid=APP_UID).startswith("port=9443 ")
    assert connect_from(net, app, other.ip, 9444, uid=APP_UID).startswith("port=9444 ")
    assert connect_from(net, app, excluded_host.ip, 9080, uid=APP_UID).startswith("port=9080 ")
    # Neither exclusion is broader than it says.
    assert connect_from(net, app, other.ip, 9080, uid=APP_UID) == (
        f"port=15001 orig={other.ip}:9080"
    )


@pytest.mark.netns
def test_the_init_command_writes_the_rules_in_its_own_network_namespace(net: PodNetwork) -> None:
    """`meshward sidecar init` (the injected init container's command) run inside the pod."""
    pod = net.add_pod("init")
    argv = [sys.executable, "-m", "meshward", "sidecar", "init", "-b", "9080", "-o", "5432"]
    done = net.run(pod, argv)
    assert done.returncode == 0, done.stderr
    want = InterceptionOptions(include_inbound_ports=(9080,), exclude_outbound_ports=(5432,))
    got = read_nat_table(pod.netns)
    assert {c: r for c, r in got.items() if r or c in ISTIO_CHAINS} == parse_nat_rules(
        render_rules(want)
    )
    bad = net.run(pod, [sys.executable, "-m", "meshward", "sidecar", "init", "-x", "10.0.0.0/40"])
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == [
        "Error: interception: -x '10.0.0.0/40' is not a CIDR: '10.0.0.0/40' does not appear to be an IPv4 or IPv6 network"
    ]
