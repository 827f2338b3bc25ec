"""Pods for the local mesh: network namespaces on a host bridge.

A pod is a network namespace `<prefix>-<name>` joined to the bridge `<prefix>-br` by a veth pair
(host side `<prefix>-v<host index>`, pod side `eth0`), with one address in the network's subnet and
a hosts file `/etc/netns/<netns>/hosts` (which `ip netns exec` bind-mounts over /etc/hosts) that maps
service names to pod addresses. The host side of the bridge holds the subnet's first address so host
processes (the ingress, tests) reach pods. Pods get the connected route only: no default route, no
NAT, no forwarding changes on the host, so nothing a pod sends can leave the machine. A pod's eth0
has no IPv6 (not even link-local), so the IPv4 interception rules see all of its traffic.

Everything created is named from the prefix, so `PodNetwork.cleanup_prefix` can remove what a crashed
run left behind without having to remember it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from meshward_common.commands import COMMAND_TIMEOUT_S, run_command
from meshward_common.errors import ConfigError, MeshwardError

NETNS_ETC = Path("/etc/netns")
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{1,7}$")
_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")
_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
_IFNAME_MAX = 15
_STOP_GRACE_S = 3.0
_LOCALHOST_LINES = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"

Stream = int | IO[Any] | None


class PodError(MeshwardError):
    """A command that builds or tears down pods failed; the message names it and the pod."""


@dataclass(frozen=True)
class Pod:
    """One pod: its short name, its netns name, its address and the host end of its veth."""

    name: str
    netns: str
    ip: str
    veth_host: str


def _run(argv: Sequence[str], *, check: bool = True, stdin: str | None = None) -> str:
    return run_command(argv, PodError, "pods", check=check, stdin=stdin)


def list_netns() -> list[str]:
    """Names of the named network namespaces (`ip netns list`, without the id suffix)."""
    out = _run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def list_links() -> list[str]:
    """Names of the host's links, without the `@peer` suffix."""
    out = _run(["ip", "-o", "link", "show"], check=False)
    names = []
    for line in out.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@")[0])
    return names


def _kill_netns_processes(netns: str) -> None:
    """Kill every process still inside `netns`; otherwise the namespace (and the pod's veth) would
    outlive its name."""
    out = _run(["ip", "netns", "pids", netns], check=False)
    for token in out.split():
        try:
            os.kill(int(token), signal.SIGKILL)
        except (ValueError, ProcessLookupError, PermissionError):
            continue


def _remove_netns(netns: str) -> None:
    _kill_netns_processes(netns)
    _run(["ip", "netns", "delete", netns], check=False)
    shutil.rmtree(NETNS_ETC / netns, ignore_errors=True)


class PodNetwork:
    """A bridge, its subnet, and the pods on it. Create with `create()` or `with PodNetwork(...)`."""

    def __init__(self, prefix: str, subnet: str) -> None:
        if not _PREFIX_RE.match(prefix):
            raise ConfigError(
                f"pods: prefix {prefix!r} must be 2-8 lowercase letters/digits starting with a "
                "letter (link names are limited to 15 characters)"
            )
        try:
            network = ipaddress.IPv4Network(subnet, strict=True)
        except ValueError as exc:
            raise ConfigError(f"pods: subnet {subnet!r} is not an IPv4 network: {exc}") from exc
        if network.prefixlen > 29 or network.prefixlen < 16:
            raise ConfigError(f"pods: subnet {subnet} must be between /16 and /29")
        self.prefix = prefix
        self.subnet = network
        self.bridge = f"{prefix}-br"
        self.host_ip = str(network.network_address + 1)
        self.pods: dict[str, Pod] = {}
        self._hosts: dict[str, list[str]] = {}
        self._pod_hosts: dict[str, dict[str, list[str]]] = {}  # a pod's own table, if set
        self._spawned: list[tuple[str, subprocess.Popen[Any]]] = []  # (netns, process)
        self._created = False

    # -- lifecycle -----------------------------------------------------------------------------

    def create(self) -> PodNetwork:
        """Make the bridge with the subnet's first address; fails if it or the subnet is in use."""
        if self.bridge in list_links():
            raise ConfigError(
                f"pods: bridge {self.bridge} already exists (a running mesh, or leftovers of a "
                f"crash: PodNetwork.cleanup_prefix({self.prefix!r}) removes them)"
            )
        self._check_subnet_free()
        self._created = True
        try:
            _run(["ip", "link", "add", self.bridge, "type", "bridge"])
            _run(
                [
                    "ip",
                    "addr",
                    "add",
                    f"{self.host_ip}/{self.subnet.prefixlen}",
                    "dev",
                    self.bridge,
                ]
            )
            _run(["ip", "link", "set", self.bridge, "up"])
        except BaseException:
            self.destroy()
            raise
        return self

    def _check_subnet_free(self) -> None:
        out = _run(["ip", "-o", "-4", "addr", "show"], check=False)
        for line in out.splitlines():
            fields = line.split()
            if "inet" not in fields:
                continue
            iface = ipaddress.IPv4Interface(fields[fields.index("inet") + 1])
            if iface.network.overlaps(self.subnet):
                raise ConfigError(
                    f"pods: subnet {self.subnet} overlaps {iface} on {fields[1]} already"
                )

    def destroy(self) -> None:
        """Stop what was spawned and remove every pod, the bridge and the hosts files. Idempotent,
        and thorough: it also removes anything else named with this prefix."""
        for _, proc in self._spawned:
            _stop_process_group(proc)
        self._spawned.clear()
        self.pods.clear()
        self._hosts.clear()
        self._created = False
        self.cleanup_prefix(self.prefix)

    @classmethod
    def attach(cls, prefix: str, subnet: str) -> PodNetwork:
        """The network another process created (`meshward up`), rebuilt from the kernel's state:
        its pods, their addresses and the hosts table. Processes it spawned are not tracked, but
        destroy() still kills them through their namespaces."""
        net = cls(prefix, subnet)
        if net.bridge not in list_links():
            raise ConfigError(f"pods: no network {prefix}: bridge {net.bridge} does not exist")
        net._created = True
        mark = f"{prefix}-"
        for netns in sorted(list_netns()):
            if not netns.startswith(mark):
                continue
            name = netns[len(mark) :]
            out = _run(["ip", "-n", netns, "-o", "-4", "addr", "show", "dev", "eth0"], check=False)
            fields = out.split()
            if "inet" not in fields:
                continue  # half-built by a crash: not a pod, cleanup_prefix removes it
            address = ipaddress.IPv4Interface(fields[fields.index("inet") + 1]).ip
            index = int(address) - int(net.subnet.network_address)
            net.pods[name] = Pod(name, netns, str(address), f"{prefix}-v{index}")
        hosts_file = NETNS_ETC / next(iter(net.pods.values())).netns / "hosts" if net.pods else None
        if hosts_file is not None and hosts_file.is_file():
            net._hosts = _parse_hosts(hosts_file.read_text(encoding="utf-8"))
        return net

    @classmethod
    def join(cls, prefix: str, subnet: str) -> PodNetwork:
        """The bridge another process made, to add and remove pods of one's own on it (a node
        runner: several share one bridge). Unlike attach(), the pods already there are left to
        whoever made them: destroy() is not for a joined network."""
        net = cls(prefix, subnet)
        if net.bridge not in list_links():
            raise ConfigError(f"pods: no network {prefix}: bridge {net.bridge} does not exist")
        net._created = True
        return net

    @staticmethod
    def cleanup_prefix(prefix: str) -> None:
        """Remove every netns, link and /etc/netns dir named `<prefix>-*` (leftovers of a crash)."""
        if not _PREFIX_RE.match(prefix):
            raise ConfigError(f"pods: refusing to clean up by prefix {prefix!r}")
        mark = f"{prefix}-"
        for netns in list_netns():
            if netns.startswith(mark):
                _remove_netns(netns)
        for link in list_links():
            if link.startswith(mark):
                _run(["ip", "link", "delete", link], check=False)
        if NETNS_ETC.is_dir():
            for entry in NETNS_ETC.iterdir():
                if entry.name.startswith(mark):
                    shutil.rmtree(entry, ignore_errors=True)

    def __enter__(self) -> PodNetwork:
        return self.create()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.destroy()

    # -- pods ----------------------------------------------------------------------------------

    def add_pod(self, name: str, ip: str | None = None) -> Pod:
        """A new pod `<prefix>-<name>` with loopback up and eth0 at `ip` (next free if None)."""
        if not self._created:
            raise ConfigError(f"pods: network {self.prefix} is not created; call create() first")
        if not _NAME_RE.match(name):
            raise ConfigError(f"pods: pod name {name!r} must be lowercase DNS-label characters")
        if name in self.pods:
            raise ConfigError(f"pods: pod {name!r} already exists in network {self.prefix}")
        address = self._pick_address(ip)
        index = int(address) - int(self.subnet.network_address)
        pod = Pod(
            name=name,
            netns=f"{self.prefix}-{name}",
            ip=str(address),
            veth_host=f"{self.prefix}-v{index}",
        )
        assert len(pod.veth_host) <= _IFNAME_MAX  # guaranteed by the prefix and subnet checks
        self.pods[name] = pod
        try:
            self._build_pod(pod)
        except BaseException:
            self.remove_pod(name)
            raise
        return pod

    def _pick_address(self, ip: str | None) -> ipaddress.IPv4Address:
        taken = {ipaddress.IPv4Address(p.ip) for p in self.pods.values()}
        taken.add(ipaddress.IPv4Address(self.host_ip))
        if ip is None:
            for candidate in self.subnet.hosts():
                if candidate not in taken:
                    return candidate
            raise ConfigError(f"pods: subnet {self.subnet} has no free address left")
        try:
            address = ipaddress.IPv4Address(ip)
        except ValueError as exc:
            raise ConfigError(f"pods: pod address {ip!r} is not IPv4: {exc}") from exc
        if address not in self.subnet or address in (
            self.subnet.network_address,
            self.subnet.broadcast_address,
        ):
            raise ConfigError(f"pods: pod address {ip} is not a host address of {self.subnet}")
        if address in taken:
            raise ConfigError(f"pods: pod address {ip} is already used in {self.subnet}")
        return address

    def _build_pod(self, pod: Pod) -> None:
        netns = pod.netns
        (NETNS_ETC / netns).mkdir(parents=True, exist_ok=True)
        self._write_hosts(pod)
        _run(["ip", "netns", "add", netns])
        _run(["ip", "-n", netns, "link", "set", "lo", "up"])
        # eth0 must carry no IPv6 at all: interception covers IPv4 only, and a link-local fe80::
        # address would let an app reach other pods around its sidecar. Setting the netns default
        # before eth0 exists means it never gets an address; lo keeps ::1.
        _run(
            [
                "ip",
                "netns",
                "exec",
                netns,
                "sysctl",
                "-q",
                "-w",
                "net.ipv6.conf.default.disable_ipv6=1",
            ]
        )
        _run(
            [
                "ip",
                "link",
                "add",
                pod.veth_host,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                netns,
            ]
        )
        _run(["ip", "link", "set", pod.veth_host, "master", self.bridge, "up"])
        # The connected route from this address is the pod's only route: no way off the machine.
        _run(["ip", "-n", netns, "addr", "add", f"{pod.ip}/{self.subnet.prefixlen}", "dev", "eth0"])
        _run(["ip", "-n", netns, "link", "set", "eth0", "up"])

    def remove_pod(self, name: str) -> None:
        """Remove one pod: kill its processes, delete its netns (the veth goes with it), hosts dir."""
        pod = self.pods.pop(name, None)
        self._pod_hosts.pop(name, None)
        if pod is None:
            return
        for netns, proc in self._spawned:
            if netns == pod.netns:
                _stop_process_group(proc)
        self._spawned = [entry for entry in self._spawned if entry[0] != pod.netns]
        _remove_netns(pod.netns)
        if pod.veth_host in list_links():
            _run(["ip", "link", "delete", pod.veth_host], check=False)

    def pod(self, name: str) -> Pod:
        try:
            return self.pods[name]
        except KeyError:
            raise ConfigError(f"pods: no pod {name!r} in network {self.prefix}") from None

    # -- hosts files ---------------------------------------------------------------------------

    def set_hosts(self, names: Mapping[str, Sequence[str]]) -> None:
        """Map service names to addresses in every pod's /etc/hosts (and in pods added later)."""
        self._hosts = _hosts_table(names)
        for pod in self.pods.values():
            self._write_hosts(pod)

    def set_pod_hosts(self, name: str, names: Mapping[str, Sequence[str]]) -> None:
        """One pod's own table (pods in different Kubernetes namespaces resolve different short
        names); it replaces the network's table for that pod."""
        pod = self.pod(name)
        self._pod_hosts[name] = _hosts_table(names)
        self._write_hosts(pod)

    def hosts_text(self, pod_name: str | None = None) -> str:
        """The hosts file a pod gets: localhost, then one line per address with its names."""
        by_address: dict[str, list[str]] = {}
        table = self._pod_hosts.get(pod_name, self._hosts) if pod_name else self._hosts
        for host, addresses in table.items():
            for address in addresses:
                by_address.setdefault(address, []).append(host)
        lines = [f"{address}\t{' '.join(hosts)}\n" for address, hosts in by_address.items()]
        return _LOCALHOST_LINES + "".join(lines)

    def _write_hosts(self, pod: Pod) -> None:
        path = NETNS_ETC / pod.netns / "hosts"
        # Rewrite in place, never rename: processes already in the pod see the file through a
        # bind mount of this inode, and `ip netns exec` would bind-mount any temp file in the dir.
        with open(path, "a+", encoding="utf-8") as fh:
            fh.seek(0)
            fh.truncate()
            fh.write(self.hosts_text(pod.name))
        path.chmod(0o644)

    # -- processes -----------------------------------------------------------------------------

    def command(
        self, pod: Pod, argv: Sequence[str], *, uid: int | None = None, gid: int | None = None
    ) -> list[str]:
        """The argv that runs `argv` inside `pod` as uid/gid (gid defaults to uid; root when uid
        is None). Pure: `pod` need not have been added by this object (launchers build commands
        for pods that already exist in the kernel)."""
        if not argv:
            raise ConfigError(f"pods: empty command for pod {pod.name}")
        cmd = ["ip", "netns", "exec", pod.netns]
        if uid is not None:
            group = uid if gid is None else gid
            cmd += ["setpriv", "--reuid", str(uid), "--regid", str(group), "--clear-groups", "--"]
        elif gid is not None:
            raise ConfigError(f"pods: gid {gid} given without a uid for pod {pod.name}")
        return cmd + list(argv)

    def spawn(
        self,
        pod: Pod,
        argv: Sequence[str],
        *,
        uid: int | None = None,
        gid: int | None = None,
        env: Mapping[str, str] | None = None,
        stdout: Stream = None,
        stderr: Stream = None,
        stdin: Stream = subprocess.DEVNULL,
        cwd: str | os.PathLike[str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start `argv` in `pod` as uid/gid (gid defaults to uid) in its own process group; the
        network kills it on destroy(). `env` replaces the environment when given."""
        if pod.name not in self.pods:
            raise ConfigError(f"pods: pod {pod.name!r} is not in network {self.prefix}")
        proc = subprocess.Popen(
            self.command(pod, argv, uid=uid, gid=gid),
            env=dict(env) if env is not None else None,
            stdout=stdout,
            stderr=stderr,
            stdin=stdin,
            cwd=cwd,
            start_new_session=True,
        )
        self._spawned.append((pod.netns, proc))
        return proc

    def run(
        self,
        pod: Pod,
        argv: Sequence[str],
        *,
        uid: int | None = None,
        gid: int | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = COMMAND_TIMEOUT_S,
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` in `pod` to completion, capturing text output (no check on the exit code)."""
        if pod.name not in self.pods:
            raise ConfigError(f"pods: pod {pod.name!r} is not in network {self.prefix}")
        return subprocess.run(
            self.command(pod, argv, uid=uid, gid=gid),
            env=dict(env) if env is not None else None,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            start_new_session=True,
        )


def _hosts_table(names: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    table: dict[str, list[str]] = {}
    for host, addresses in names.items():
        if not _HOSTNAME_RE.match(host):
            raise ConfigError(f"pods: {host!r} is not a valid host name for a hosts file")
        if isinstance(addresses, str):
            raise ConfigError(f"pods: addresses of {host!r} must be a list, not a string")
        for address in addresses:
            try:
                ipaddress.ip_address(address)
            except ValueError as exc:
                raise ConfigError(f"pods: address {address!r} of {host!r}: {exc}") from exc
        table[host] = list(addresses)
    return table


def _parse_hosts(text: str) -> dict[str, list[str]]:
    """The name -> addresses table of a hosts file we wrote, without the localhost lines."""
    table: dict[str, list[str]] = {}
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2 or fields[0] in ("127.0.0.1", "::1"):
            continue
        for host in fields[1:]:
            table.setdefault(host, []).append(fields[0])
    return table


def _stop_process_group(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left after a short grace. A process
    that exited earlier is left alone (its pid may be reused); stragglers it left in the pod die
    with the netns."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + _STOP_GRACE_S
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    # The leader may be gone while children in its group are not.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=_STOP_GRACE_S)
