"""`meshward authz`: decide a request against policy files (`check`) and validate them (`lint`).

Exit codes are for scripts: check gives 0 on ALLOW, 1 on DENY, 2 on bad input (unusable policy
files or arguments); lint gives 0 when every file is valid, 1 when any is not, 2 on bad arguments.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from policy.engine import Decision, PolicySet, RuleMatch, Workload, decide
from policy.loader import load_paths
from policy.model import DEFAULT_ROOT_NAMESPACE
from policy.peer_auth import resolve_mtls
from policy.request import Request

EXIT_ALLOW, EXIT_DENY, EXIT_BAD_INPUT = 0, 1, 2


@click.group("authz")
def authz() -> None:
    """Istio AuthorizationPolicy / PeerAuthentication tools."""


def _pairs(values: tuple[str, ...], sep: str, what: str) -> dict[str, str]:
    out = {}
    for item in values:
        key, found, value = item.partition(sep)
        if not found or not key.strip():
            raise click.BadParameter(f"{item!r} is not {what}")
        out[key.strip()] = value.strip()
    return out


@authz.command("check")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--namespace",
    "-n",
    default="default",
    show_default=True,
    help="Namespace of the workload receiving the request.",
)
@click.option(
    "--label",
    "-l",
    "labels",
    multiple=True,
    help="Label of the receiving workload, KEY=VALUE (repeatable).",
)
@click.option(
    "--principal",
    "-p",
    default="",
    help="Caller's SPIFFE ID (with or without spiffe://); empty: plaintext.",
)
@click.option("--source-ip", default="", help="Caller's IP address.")
@click.option("--destination-ip", default="", help="Workload's IP address.")
@click.option("--port", type=click.IntRange(0, 65535), default=0, help="Destination port.")
@click.option("--tcp", is_flag=True, help="A plain TCP connection, not an HTTP request.")
@click.option("--method", "-X", default="GET", show_default=True)
@click.option("--path", "path_", default="/", show_default=True)
@click.option("--host", default="", help="Host / :authority of the request.")
@click.option(
    "--header", "-H", "headers", multiple=True, help="Request header, 'Name: value' (repeatable)."
)
@click.option("--sni", default="", help="TLS server name the caller asked for.")
@click.option(
    "--root-namespace",
    default=DEFAULT_ROOT_NAMESPACE,
    show_default=True,
    help="Namespace whose policies apply mesh-wide.",
)
@click.option(
    "-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True
)
def check(
    paths: tuple[Path, ...],
    namespace: str,
    labels: tuple[str, ...],
    principal: str,
    source_ip: str,
    destination_ip: str,
    port: int,
    tcp: bool,
    method: str,
    path_: str,
    host: str,
    headers: tuple[str, ...],
    sni: str,
    root_namespace: str,
    output: str,
) -> None:
    """Decide one request against the policies in PATHS (files or directories)."""
    loaded = load_paths(paths)
    if loaded.problems:
        for problem in loaded.problems:
            click.echo(f"error: {problem}", err=True)
        click.echo(
            "error: refusing to decide with invalid policy files (see `meshward authz lint`)",
            err=True,
        )
        sys.exit(EXIT_BAD_INPUT)
    policy_set = PolicySet.of(loaded.resources, root_namespace)
    workload = Workload(namespace, _pairs(labels, "=", "KEY=VALUE"))
    request = Request(
        principal,
        source_ip,
        destination_ip,
        port,
        is_http=not tcp,
        method="" if tcp else method,
        path="" if tcp else path_,
        host="" if tcp else host,
        headers={} if tcp else _pairs(headers, ":", "'Name: value'"),
        sni=sni,
    )
    decision = decide(policy_set, workload, request)
    mtls = resolve_mtls(
        policy_set.peer_authentication,
        namespace,
        workload.labels,
        port,
        root_namespace,
        default="STRICT",
    )
    if output == "json":
        click.echo(json.dumps(_as_json(decision, mtls), indent=2))
    else:
        click.echo("ALLOW" if decision.allowed else "DENY")
        if decision.match:
            click.echo(
                f"  policy: {decision.match.policy} rule {decision.match.rule} ({decision.match.source})"
            )
            click.echo(f"  rule:   {decision.match.description}")
        click.echo(f"  reason: {decision.reason}")
        for audit in decision.audits:
            click.echo(f"  audit:  {audit}")
        click.echo(
            f"  mtls:   {mtls} (PeerAuthentication for port {port}; meshward's sidecars use STRICT when none is set)"
        )
    sys.exit(EXIT_ALLOW if decision.allowed else EXIT_DENY)


def _match_json(m: RuleMatch) -> dict[str, Any]:
    return {
        "policy": m.policy,
        "action": m.action,
        "rule": m.rule,
        "rule_text": m.description,
        "file": m.source,
    }


def _as_json(decision: Decision, mtls: str) -> dict[str, Any]:
    return {
        "decision": "ALLOW" if decision.allowed else "DENY",
        "allowed": decision.allowed,
        "reason": decision.reason,
        "policy": decision.policy,
        "rule": decision.match.rule if decision.match else None,
        "match": _match_json(decision.match) if decision.match else None,
        "audits": [_match_json(a) for a in decision.audits],
        "mtls_mode": mtls,
    }


@authz.command("lint")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True
)
def lint(paths: tuple[Path, ...], output: str) -> None:
    """Validate policy files or directories; print every problem with file and line."""
    loaded = load_paths(paths)
    if output == "json":
        problems = [
            {"file": p.source, "line": p.line, "field": p.field, "reason": p.reason}
            for p in loaded.problems
        ]
        click.echo(
            json.dumps(
                {"files": loaded.files, "resources": len(loaded.resources), "problems": problems},
                indent=2,
            )
        )
    else:
        for problem in loaded.problems:
            click.echo(str(problem))
        status = "ok" if not loaded.problems else f"{len(loaded.problems)} problem(s)"
        click.echo(
            f"{status}: {loaded.files} file(s), {len(loaded.resources)} valid resource(s)",
            err=bool(loaded.problems),
        )
    sys.exit(1 if loaded.problems else 0)
