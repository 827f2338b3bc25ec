"""Pods as network namespaces: addressing, names, processes as a uid, and teardown without a trace."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshward.pods import NETNS_ETC, Pod, PodNetwork, list_links, list_netns
from meshward_common.errors import ConfigError
from tests.harness.pods import pod_network, pod_network_fixture, wait_for_tcp

PREFIX = "mwic"
SUBNET = "10.213.32.0/24"
# A second network inside our own subnet and name space, for the overlap and crash tests.
OTHER_PREFIX = "mwicx"
OTHER_SUBNET = "10.213.32.128/25"


def leftovers(prefix: str) -> list[str]:
    mark = f"{prefix}-"
    found = [f"netns {n}" for n in list_netns() if n.startswith(mark)]
    found += [f"link {n}" for n in list_links() if n.startswith(mark)]
    if NETNS_ETC.is_dir():
        found += [f"dir {p}" for p in NETNS_ETC.iterdir() if p.name.startswith(mark)]
    return found


def ip_json(*args: str) -> list[dict[str, object]]:
    out = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=True).stdout
    result: list[dict[str, object]] = json.loads(out)
    return result


@pytest.fixture
def net() -> Iterator[PodNetwork]:
    with pod_network(PREFIX, SUBNET) as network:
        yield network


# ---------------------------------------------------------------------------------------------
# Pure: validation and the hosts file


@pytest.mark.parametrize(
    ("prefix", "subnet", "needle"),
    [
        ("MW", SUBNET, "prefix"),
        ("mw-ic", SUBNET, "prefix"),
        ("averylongprefix", SUBNET, "prefix"),
        ("m", SUBNET, "prefix"),
        (PREFIX, "10.213.32.1/24", "not an IPv4 network"),
        (PREFIX, "fd00::/64", "not an IPv4 network"),
        (PREFIX, "10.213.32.0/30", "between /16 and /29"),
        (PREFIX, "10.0.0.0/8", "between /16 and /29"),
    ],
)
def test_bad_prefix_or_subnet_is_refused(prefix: str, subnet: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        PodNetwork(prefix, subnet)


def test_names_derive_from_the_prefix() -> None:
    network = PodNetwork(PREFIX, SUBNET)
    assert network.bridge == "mwic-br"
    assert network.host_ip == "10.213.32.1"


def test_add_pod_before_create_is_refused() -> None:
    with pytest.raises(ConfigError, match="not created"):
        PodNetwork(PREFIX, SUBNET).add_pod("a")


def test_command_wraps_argv_in_ip_netns_exec_and_setpriv() -> None:
    network = PodNetwork(PREFIX, SUBNET)
    pod = Pod("app", "mwic-app", "10.213.32.2", "mwic-v2")
    assert network.command(pod, ["id", "-u"], uid=1337) == [
        *("ip", "netns", "exec", "mwic-app"),
        *("setpriv", "--reuid", "1337", "--regid", "1337", "--clear-groups", "--"),
        *("id", "-u"),
    ]
    assert network.command(pod, ["id"], uid=1000, gid=1337)[5:9] == [
        "--reuid",
        "1000",
        "--regid",
        "1337",
    ]
    assert network.command(pod, ["id"]) == ["ip", "netns", "exec", "mwic-app", "id"]
    with pytest.raises(ConfigError, match="empty command"):
        network.command(pod, [])
    with pytest.raises(ConfigError, match="gid 5 given without a uid"):
        network.command(pod, ["id"], gid=5)


def test_hosts_text_groups_names_by_address() -> None:
    network = PodNetwork(PREFIX, SUBNET)
    network.set_hosts(
        {"reviews": ["10.213.32.5", "10.213.32.6"], "reviews-v1": ["10.213.32.5"], "db": []}
    )
    assert network.hosts_text() == (
        "127.0.0.1\tlocalhost\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n"
        "10.213.32.5\treviews reviews-v1\n"
        "10.213.32.6\treviews\n"
    )


@pytest.mark.parametrize(
    ("names", "needle"),
    [
        ({"bad name": ["10.213.32.5"]}, "valid host name"),
        ({"reviews": ["10.213.32.500"]}, "address"),
        ({"reviews": "10.213.32.5"}, "must be a list"),
    ],
)
def test_bad_hosts_entries_are_refused(names: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        PodNetwork(PREFIX, SUBNET).set_hosts(names)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Real namespaces

ECHO_SERVER = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(8)
while True:
    c, peer = s.accept(); c.sendall(("hello " + peer[0] + "\n").encode()); c.close()
"""
CLIENT = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
print(s.makefile().readline().strip())
"""


@pytest.mark.netns
def test_create_makes_the_bridge_with_the_first_address(net: PodNetwork) -> None:
    (link,) = ip_json("addr", "show", "dev", net.bridge)
    assert link["operstate"] in ("UP", "UNKNOWN", "DOWN")  # DOWN until a port joins
    addrs = [(a["local"], a["prefixlen"]) for a in link["addr_info"] if a["family"] == "inet"]  # type: ignore[attr-defined]
    assert addrs == [("10.213.32.1", 24)]


@pytest.mark.netns
def test_a_pod_has_its_address_loopback_and_only_the_connected_route(net: PodNetwork) -> None:
    pod = net.add_pod("a")
    assert pod.netns == "mwic-a"
    assert pod.ip == "10.213.32.2"
    assert pod.veth_host == "mwic-v2"
    assert pod.netns in list_netns()
    routes = ip_json("-n", pod.netns, "route", "show")
    assert [r["dst"] for r in routes] == ["10.213.32.0/24"]
    assert all(r["dst"] != "default" for r in ip_json("-n", pod.netns, "-6", "route", "show"))
    links = {link["ifname"]: link for link in ip_json("-n", pod.netns, "link", "show")}
    assert "UP" in links["lo"]["flags"]  # type: ignore[operator]
    assert "UP" in links["eth0"]["flags"]  # type: ignore[operator]
    # No IPv6 on eth0 (not even link-local), so nothing gets around the IPv4 interception rules;
    # loopback keeps ::1.
    addrs = {a["ifname"]: a["addr_info"] for a in ip_json("-n", pod.netns, "-6", "addr", "show")}
    assert addrs.get("eth0", []) == []
    assert [x["local"] for x in addrs["lo"]] == ["::1"]  # type: ignore[attr-defined]
    (veth,) = ip_json("link", "show", "dev", pod.veth_host)
    assert veth["master"] == net.bridge
    assert (NETNS_ETC / pod.netns / "hosts").read_text().startswith("127.0.0.1\tlocalhost\n")


@pytest.mark.netns
def test_addresses_are_chosen_or_refused(net: PodNetwork) -> None:
    net.add_pod("a", ip="10.213.32.77")
    assert net.add_pod("b").ip == "10.213.32.2"
    with pytest.raises(ConfigError, match="already used"):
        net.add_pod("c", ip="10.213.32.77")
    with pytest.raises(ConfigError, match="already used"):
        net.add_pod("c", ip="10.213.32.1")  # the bridge's
    with pytest.raises(ConfigError, match="not a host address"):
        net.add_pod("c", ip="10.213.33.5")
    with pytest.raises(ConfigError, match="not a host address"):
        net.add_pod("c", ip="10.213.32.255")
    with pytest.raises(ConfigError, match="already exists"):
        net.add_pod("a")
    with pytest.raises(ConfigError, match="DNS-label"):
        net.add_pod("Bad_Name")
    # Refusals leave nothing half-made.
    assert "mwic-c" not in list_netns()


@pytest.mark.netns
def test_pods_reach_each_other_by_service_name_and_the_host_reaches_pods(
    net: PodNetwork,
) -> None:
    a = net.add_pod("a")
    b = net.add_pod("b")
    net.set_hosts({"reviews": [b.ip]})
    server = net.spawn(b, [sys.executable, "-c", ECHO_SERVER, "9080"], uid=1000)
    wait_for_tcp(b.ip, 9080, proc=server)
    done = net.run(a, [sys.executable, "-c", CLIENT, "reviews", "9080"], uid=1000)
    assert done.stdout.strip() == f"hello {a.ip}", done.stderr
    # A name the hosts file does not hold does not resolve (and no DNS is reachable).
    done = net.run(a, [sys.executable, "-c", CLIENT, "ratings", "9080"], uid=1000)
    assert done.returncode != 0
    with subprocess.Popen(
        [sys.executable, "-c", CLIENT, b.ip, "9080"], stdout=subprocess.PIPE, text=True
    ) as from_host:
        out, _ = from_host.communicate(timeout=20)
    assert out.strip() == f"hello {net.host_ip}"


@pytest.mark.netns
def test_a_pod_has_no_way_off_the_machine(net: PodNetwork) -> None:
    pod = net.add_pod("a")
    done = net.run(pod, ["ip", "route", "get", "192.0.2.1"])
    assert done.returncode != 0
    assert "unreachable" in done.stderr


@pytest.mark.netns
def test_spawn_runs_as_the_uid_and_gid_asked(net: PodNetwork) -> None:
    pod = net.add_pod("a")
    done = net.run(pod, ["id", "-u"], uid=1337)
    assert done.stdout.strip() == "1337"
    done = net.run(pod, ["sh", "-c", "id -u; id -g; id -G"], uid=1000, gid=1337)
    assert done.stdout.split() == ["1000", "1337", "1337"]  # supplementary groups cleared
    assert net.run(pod, ["id", "-u"]).stdout.strip() == "0"
    proc = net.spawn(pod, ["sh", "-c", "readlink /proc/self/ns/net"], stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=20)
    mine = Path("/proc/self/ns/net").readlink()
    assert out.decode().strip() != str(mine)


@pytest.mark.netns
def test_set_hosts_reaches_processes_already_running(net: PodNetwork) -> None:
    pod = net.add_pod("a")
    proc = net.spawn(
        pod,
        ["sh", "-c", "read line; cat /etc/hosts"],
        uid=1000,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    net.set_hosts({"details": ["10.213.32.9"]})
    out, _ = proc.communicate(b"go\n", timeout=20)
    assert "10.213.32.9\tdetails" in out.decode()
    # Pods added later get the current table too.
    later = net.add_pod("b")
    assert "details" in (NETNS_ETC / later.netns / "hosts").read_text()


@pytest.mark.netns
def test_destroy_kills_processes_and_leaves_nothing_behind() -> None:
    with pod_network(PREFIX, SUBNET) as network:
        a = network.add_pod("a")
        network.add_pod("b")
        network.set_hosts({"a": [a.ip]})
        proc = network.spawn(a, ["sleep", "300"], uid=1000)
        assert leftovers(PREFIX)
    assert proc.poll() is not None
    assert leftovers(PREFIX) == []
    network.destroy()  # idempotent
    assert leftovers(PREFIX) == []


@pytest.mark.netns
def test_destroy_runs_when_the_test_body_fails() -> None:
    def failing_test_body() -> None:
        with pod_network(PREFIX, SUBNET) as network:
            network.add_pod("a")
            raise RuntimeError("test body failed")

    with pytest.raises(RuntimeError, match="test body failed"):
        failing_test_body()
    assert leftovers(PREFIX) == []


@pytest.mark.netns
def test_remove_pod_removes_just_that_pod(net: PodNetwork) -> None:
    a = net.add_pod("a")
    b = net.add_pod("b")
    proc = net.spawn(a, ["sleep", "300"])
    net.remove_pod("a")
    assert proc.poll() is not None
    assert a.netns not in list_netns()
    assert a.veth_host not in list_links()
    assert not (NETNS_ETC / a.netns).exists()
    assert b.netns in list_netns()


@pytest.mark.netns
def test_cleanup_prefix_removes_a_crashed_runs_leftovers() -> None:
    crashed = PodNetwork(OTHER_PREFIX, OTHER_SUBNET).create()
    try:
        pod = crashed.add_pod("a")
        # A process started outside the network's bookkeeping, as a crashed run would leave it.
        orphan = subprocess.Popen(["ip", "netns", "exec", pod.netns, "sleep", "300"])
        with pytest.raises(ConfigError, match="already exists"):
            PodNetwork(OTHER_PREFIX, OTHER_SUBNET).create()
        # Forget the object, as a crash would, and clean up by name alone.
        del crashed
        PodNetwork.cleanup_prefix(OTHER_PREFIX)
        assert orphan.wait(timeout=10) != 0
        assert leftovers(OTHER_PREFIX) == []
    finally:
        PodNetwork.cleanup_prefix(OTHER_PREFIX)


@pytest.mark.netns
def test_overlapping_subnets_are_refused(net: PodNetwork) -> None:
    try:
        with pytest.raises(ConfigError, match="overlaps"):
            PodNetwork(OTHER_PREFIX, OTHER_SUBNET).create()
    finally:
        PodNetwork.cleanup_prefix(OTHER_PREFIX)
    assert leftovers(OTHER_PREFIX) == []


def test_cleanup_refuses_a_prefix_that_could_match_everything() -> None:
    with pytest.raises(ConfigError, match="refusing"):
        PodNetwork.cleanup_prefix("")


other_net = pod_network_fixture(OTHER_PREFIX, OTHER_SUBNET)


@pytest.mark.netns
def test_the_fixture_factory_gives_a_created_network(other_net: PodNetwork) -> None:
    assert other_net.prefix == OTHER_PREFIX
    assert other_net.bridge in list_links()
    assert other_net.add_pod("a").ip == "10.213.32.130"


@pytest.mark.netns
def test_attach_rebuilds_a_network_made_by_another_process(net: PodNetwork) -> None:
    a = net.add_pod("a")
    b = net.add_pod("b", ip="10.213.32.40")
    net.set_hosts({"reviews": [b.ip], "productpage": [a.ip]})
    attached = PodNetwork.attach(PREFIX, SUBNET)
    assert attached.pods == net.pods
    assert attached.hosts_text() == net.hosts_text()
    # It can add to the network and tear it down, processes included.
    c = attached.add_pod("c")
    assert c.ip not in (a.ip, b.ip)
    sleeper = subprocess.Popen(["ip", "netns", "exec", a.netns, "sleep", "300"])
    attached.destroy()
    assert sleeper.wait(timeout=10) != 0
    assert leftovers(PREFIX) == []


def test_attach_to_a_missing_network_is_refused() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        PodNetwork.attach("mwicnone", "10.213.32.0/24")
