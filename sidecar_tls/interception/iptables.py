"""istio-init's job: the nat rules that steer a pod's TCP through its sidecar.

`render_rules` is pure: options in, `iptables-restore` input out. With the default options it writes
the same chains, in the same order, as `istio-iptables -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*'
-b '*' -d 15090,15021,15020` (see DESIGN.md, "The life of a request"); `-i`/`-b` lists (only these
CIDRs / ports are captured) and empty values (nothing captured) follow istio-iptables too.
`apply_rules` is the thin shell that loads that text into a network namespace (a named one, or the
caller's own, as istio-init does inside the pod) and reads it back to check it took.
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

from meshward_common import ports
from meshward_common.capture_flags import check_cidr, check_id, check_port
from meshward_common.commands import run_command
from meshward_common.errors import MeshwardError

INBOUND_CHAIN = "ISTIO_INBOUND"
REDIRECT_CHAIN = "ISTIO_REDIRECT"
IN_REDIRECT_CHAIN = "ISTIO_IN_REDIRECT"
OUTPUT_CHAIN = "ISTIO_OUTPUT"
ISTIO_CHAINS = (INBOUND_CHAIN, REDIRECT_CHAIN, IN_REDIRECT_CHAIN, OUTPUT_CHAIN)
BUILTIN_NAT_CHAINS = ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")

_MULTIPORT_MAX = 15
_LOCK_WAIT_S = 10


class InterceptionError(MeshwardError):
    """iptables refused the rules, or what the kernel holds differs from what we loaded."""


@dataclass(frozen=True)
class InterceptionOptions:
    """What istio-iptables takes as flags (-u -g -p -z -b -d -i -o -x), validated on construction.

    `include_inbound_ports` / `include_outbound_cidrs` are istio-iptables' -b / -i: None is `*`
    (everything not excluded is captured), a tuple captures only those (an empty one: nothing)."""

    proxy_uid: int = ports.PROXY_UID
    proxy_gid: int = ports.PROXY_GID
    outbound_port: int = ports.OUTBOUND
    inbound_port: int = ports.INBOUND
    exclude_inbound_ports: tuple[int, ...] = (
        ports.AGENT_STATUS,
        ports.HEALTH,
        ports.PROMETHEUS,
    )
    exclude_outbound_ports: tuple[int, ...] = ()
    exclude_outbound_cidrs: tuple[str, ...] = ()
    include_inbound_ports: tuple[int, ...] | None = None
    include_outbound_cidrs: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        check_id(self.proxy_uid, "proxy_uid")
        check_id(self.proxy_gid, "proxy_gid")
        check_port(self.outbound_port, "outbound_port")
        check_port(self.inbound_port, "inbound_port")
        # Accept lists from callers but store tuples so the value stays frozen and hashable.
        object.__setattr__(self, "exclude_inbound_ports", tuple(self.exclude_inbound_ports))
        object.__setattr__(self, "exclude_outbound_ports", tuple(self.exclude_outbound_ports))
        object.__setattr__(self, "exclude_outbound_cidrs", tuple(self.exclude_outbound_cidrs))
        if self.include_inbound_ports is not None:
            object.__setattr__(self, "include_inbound_ports", tuple(self.include_inbound_ports))
            for port in self.include_inbound_ports:
                check_port(port, "include_inbound_ports entry")
        if self.include_outbound_cidrs is not None:
            object.__setattr__(self, "include_outbound_cidrs", tuple(self.include_outbound_cidrs))
            for cidr in self.include_outbound_cidrs:
                check_cidr(cidr, "include_outbound_cidrs entry")
        for port in self.exclude_inbound_ports:
            check_port(port, "exclude_inbound_ports entry")
        for port in self.exclude_outbound_ports:
            check_port(port, "exclude_outbound_ports entry")
        for cidr in self.exclude_outbound_cidrs:
            check_cidr(cidr, "exclude_outbound_cidrs entry")


def render_rules(options: InterceptionOptions | None = None) -> str:
    """The pod's whole nat table as `iptables-restore` input, in istio-iptables' rule order."""
    o = options if options is not None else InterceptionOptions()
    tunnel = ports.TUNNEL
    lines = ["*nat"]
    # A pod netns starts with an empty nat table, so we write the whole table, not a --noflush delta.
    lines += [f":{chain} ACCEPT [0:0]" for chain in BUILTIN_NAT_CHAINS]
    lines += [f":{chain} - [0:0]" for chain in ISTIO_CHAINS]
    # Istio always lets the HBONE tunnel port through, before anything else.
    lines.append(f"-A {INBOUND_CHAIN} -p tcp --dport {tunnel} -j RETURN")
    lines.append(f"-A {REDIRECT_CHAIN} -p tcp -j REDIRECT --to-ports {o.outbound_port}")
    lines.append(f"-A {IN_REDIRECT_CHAIN} -p tcp -j REDIRECT --to-ports {o.inbound_port}")
    lines += _inbound_capture(o)
    lines.append(f"-A OUTPUT -j {OUTPUT_CHAIN}")
    # istio-iptables -o: port exclusions come before the loopback/owner rules, for tcp and udp.
    lines += _outbound_port_returns(o.exclude_outbound_ports)
    # Envoy's inbound passthrough binds 127.0.0.6 to reach the app: never capture it again.
    lines.append(f"-A {OUTPUT_CHAIN} -o lo -s {ports.INBOUND_PASSTHROUGH_SOURCE}/32 -j RETURN")
    for flag, ident in (("--uid-owner", o.proxy_uid), ("--gid-owner", o.proxy_gid)):
        # The sidecar calling the pod's own IP goes through the inbound path (it may be a service
        # VIP that resolved back to us); the app's loopback calls are left alone; the sidecar's
        # other traffic bypasses capture entirely - that is what keeps it from looping.
        lines.append(
            f"-A {OUTPUT_CHAIN} -o lo ! -d 127.0.0.1/32 -p tcp ! --dport {tunnel} "
            f"-m owner {flag} {ident} -j {IN_REDIRECT_CHAIN}"
        )
        lines.append(f"-A {OUTPUT_CHAIN} -o lo -m owner ! {flag} {ident} -j RETURN")
        lines.append(f"-A {OUTPUT_CHAIN} -m owner {flag} {ident} -j RETURN")
    lines.append(f"-A {OUTPUT_CHAIN} -d 127.0.0.1/32 -j RETURN")
    lines += _outbound_capture(o)
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def _inbound_capture(o: InterceptionOptions) -> list[str]:
    """istio-iptables -b/-d: `*` captures every port but the excluded ones; a list captures only
    its ports (the exclusions do not apply); an empty list hooks nothing into PREROUTING."""
    if o.include_inbound_ports == ():
        return []
    lines = [f"-A PREROUTING -p tcp -j {INBOUND_CHAIN}"]
    if o.include_inbound_ports is None:
        lines += [
            f"-A {INBOUND_CHAIN} -p tcp --dport {p} -j RETURN" for p in o.exclude_inbound_ports
        ]
        lines.append(f"-A {INBOUND_CHAIN} -p tcp -j {IN_REDIRECT_CHAIN}")
        return lines
    lines += [
        f"-A {INBOUND_CHAIN} -p tcp --dport {p} -j {IN_REDIRECT_CHAIN}"
        for p in o.include_inbound_ports
    ]
    return lines


def _outbound_capture(o: InterceptionOptions) -> list[str]:
    """istio-iptables -x/-i: CIDR exclusions after loopback, then the catch-all redirect for `*`,
    or one redirect per included CIDR and a final RETURN for a list; nothing for an empty -i."""
    if o.include_outbound_cidrs == ():
        return []
    lines = [
        f"-A {OUTPUT_CHAIN} -d {ipaddress.ip_network(c, strict=False).with_prefixlen} -j RETURN"
        for c in o.exclude_outbound_cidrs
    ]
    if o.include_outbound_cidrs is None:
        lines.append(f"-A {OUTPUT_CHAIN} -j {REDIRECT_CHAIN}")
        return lines
    for cidr in o.include_outbound_cidrs:
        net = ipaddress.ip_network(cidr, strict=False)
        lines.append(f"-A {OUTPUT_CHAIN} -d {net.with_prefixlen} -j {REDIRECT_CHAIN}")
    lines.append(f"-A {OUTPUT_CHAIN} -j RETURN")
    return lines


def _outbound_port_returns(excluded: tuple[int, ...]) -> list[str]:
    """Istio's spelling: one port is a plain --dport match, several share a multiport rule.
    multiport takes at most 15 ports, so longer lists are split (Istio would fail there)."""
    if not excluded:
        return []
    groups = [excluded[i : i + _MULTIPORT_MAX] for i in range(0, len(excluded), _MULTIPORT_MAX)]
    lines = []
    for group in groups:
        for proto in ("tcp", "udp"):
            if len(group) == 1:
                match = f"--dport {group[0]}"
            else:
                match = f"-m multiport --dports {','.join(map(str, group))}"
            lines.append(f"-A {OUTPUT_CHAIN} -p {proto} {match} -j RETURN")
    return lines


RuleSpec = frozenset[tuple[bool, str, tuple[str, ...]]]


def _rule_spec(tokens: list[str]) -> RuleSpec:
    """One rule as an order-free set of (negated, option, args), so `iptables-save`'s spelling
    (`-m tcp` inserted, options reordered) compares equal to ours."""
    items: list[tuple[bool, str, tuple[str, ...]]] = []
    i = 0
    negate = False
    while i < len(tokens):
        tok = tokens[i]
        if tok == "!":
            negate = True
            i += 1
            continue
        args: list[str] = []
        i += 1
        while i < len(tokens) and not tokens[i].startswith("-") and tokens[i] != "!":
            args.append(tokens[i])
            i += 1
        items.append((negate, tok, tuple(args)))
        negate = False
    # iptables-save names the implicit protocol match module; it adds no meaning.
    implicit = {(False, "-m", ("tcp",)), (False, "-m", ("udp",))}
    return frozenset(item for item in items if item not in implicit)


def parse_nat_rules(text: str) -> dict[str, list[RuleSpec]]:
    """`iptables-save`/`iptables-restore` text (or Istio's `-N`/`-A` listing) to chain -> ordered
    rules. Built-in chains appear only if they hold rules; user chains always appear."""
    chains: dict[str, list[RuleSpec]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or line.startswith("*") or line == "COMMIT":
            continue
        if line.startswith(":"):
            name = line[1:].split()[0]
            if name not in BUILTIN_NAT_CHAINS:
                chains.setdefault(name, [])
            continue
        tokens = shlex.split(line)
        if tokens[0] == "-N":
            for name in " ".join(tokens[1:]).replace("/", " ").split():
                chains.setdefault(name, [])
            continue
        if tokens[0] != "-A" or len(tokens) < 2:
            raise InterceptionError(f"interception: cannot read rule line {line!r}")
        chains.setdefault(tokens[1], []).append(_rule_spec(tokens[2:]))
    return chains


def _run_in_netns(netns: str | None, argv: list[str], stdin: str | None = None) -> str:
    prefix = [] if netns is None else ["ip", "netns", "exec", netns]
    return run_command([*prefix, *argv], InterceptionError, "interception", stdin=stdin)


def read_nat_table(netns: str | None) -> dict[str, list[RuleSpec]]:
    """The nat table the kernel holds for `netns` (None: our own), parsed like `parse_nat_rules`."""
    return parse_nat_rules(_run_in_netns(netns, ["iptables-save", "-t", "nat"]))


def apply_rules(netns: str | None, options: InterceptionOptions | None = None) -> str:
    """Load the pod's nat table into `netns` (None: the caller's own network namespace, as in an
    init container) replacing it, and verify it; returns the text loaded.

    Run before the app and the sidecar start, as istio-init does."""
    text = render_rules(options)
    # -w: the legacy backend's xtables lock is machine-wide, shared with every other netns.
    _run_in_netns(netns, ["iptables-restore", "-w", str(_LOCK_WAIT_S)], stdin=text)
    want = parse_nat_rules(text)
    got = read_nat_table(netns)
    if _nonempty(got) != _nonempty(want):
        raise InterceptionError(
            f"interception: nat table in netns {netns or '(own)'} differs from the rules loaded "
            f"({_summary(got)} vs {_summary(want)})"
        )
    return text


def _nonempty(chains: Mapping[str, list[RuleSpec]]) -> dict[str, list[RuleSpec]]:
    return {name: rules for name, rules in chains.items() if rules or name in ISTIO_CHAINS}


def _summary(chains: Mapping[str, list[RuleSpec]]) -> str:
    return ", ".join(f"{name}:{len(rules)}" for name, rules in sorted(chains.items()))
