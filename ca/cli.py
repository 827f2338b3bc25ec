"""`meshward ca`: serve the control plane, mint join tokens, write dev certificates."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import click

from ca.config import DEFAULT_STATE_DIR, CaConfig, load_config
from ca.config_watch import ConfigSource
from meshward_common import logs
from meshward_common.clock import utc_now
from meshward_common.durations import parse_duration
from meshward_common.errors import ConfigError, MeshwardError
from meshward_common.spiffe_id import DEFAULT_TRUST_DOMAIN

log = logging.getLogger("ca")


@click.group("ca")
def ca() -> None:
    """The control plane: CA, registry and policy distribution (Istio's istiod security role)."""


@ca.command("serve")
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="YAML config file")
@click.option("--listen", help="HOST:PORT (default 127.0.0.1:15012)")
@click.option("--state-dir", help=f"CA state directory (default {DEFAULT_STATE_DIR})")
@click.option("--trust-domain", help=f"SPIFFE trust domain (default {DEFAULT_TRUST_DOMAIN})")
@click.option("--registry", help="workload registry YAML file (reloaded on change)")
@click.option("--policy-dir", help="directory of AuthorizationPolicy/PeerAuthentication YAML")
@click.option(
    "--service-entry-dir",
    help="directory of Istio ServiceEntry YAML (federated meshes' services; not with "
    "--kubernetes: there they come from the API)",
)
@click.option("--bundle-endpoint-listen", help="HOST:PORT of the SPIFFE bundle endpoint (off)")
@click.option("--bundle-endpoint-refresh-hint", help="refresh hint it serves (default 5m)")
@click.option(
    "--plugin-ca-dir", help="Istio plug-in CA files (ca-cert/ca-key/root-cert/cert-chain)"
)
@click.option("--workload-ttl", help="default SVID TTL (default 24h)")
@click.option("--max-ttl", help="maximum SVID TTL a caller may ask for (default 24h)")
@click.option("--root-namespace", help="mesh-wide policy namespace (default istio-system)")
@click.option("--rate-limit", type=float, help="CSRs per second per node (default 500)")
@click.option("--rate-burst", type=float, help="burst per node (default 1000)")
@click.option("--metrics-listen", help="HOST:PORT for Prometheus /metrics (default: off)")
@click.option(
    "--webhook-listen", help="HOST:PORT for the sidecar injection webhook, HTTPS (default: off)"
)
@click.option("--injector-config", help="injector settings YAML (the webhook's ConfigMap)")
@click.option(
    "--workers", type=int, help="serving processes (default: the cores this process may use)"
)
@click.option(
    "--mtls-listen",
    help="HOST:PORT of a second port for node SVIDs only (served natively: `make native`)",
)
@click.option(
    "--root-rotation-grace",
    help="new plug-in root trusted this long before the CA signs with it (default 1h)",
)
@click.option("--handshake-timeout", help="TLS handshake deadline on the listen port (default 10s)")
@click.option("--idle-timeout", help="close a connection that sends nothing this long (default 5m)")
@click.option("--max-connections", help="connections a worker holds at once (default 4096)")
@click.option("--max-connections-per-source", help="per worker and client address (default 64)")
@click.option(
    "--kubernetes", is_flag=True, default=None,
    help="mesh state from the Kubernetes API; node agents by ServiceAccount token",
)  # fmt: skip
@click.option(
    "--kubeconfig", help="with --kubernetes: kubeconfig file (default: in-cluster config)"
)
@click.option(
    "--agent-service-account",
    help="with --kubernetes: the node agents' NAMESPACE/NAME (default istio-system/meshward-node-agent)",
)
@click.option("--token-audience", help="with --kubernetes: token audience (default istio-ca)")
@click.option("--log-level", default="INFO", show_default=True)
def serve(config_file: Path | None, log_level: str, **flags: Any) -> None:
    """Serve IstioCertificateService and MeshDiscovery over TLS, on every core."""
    logs.setup("ca", log_level)
    try:
        given = {k.replace("_", "-"): v for k, v in flags.items() if v is not None}
        config = load_config(config_file, given)
        try:
            import uvloop

            uvloop.install()
        except ImportError:  # pragma: no cover - uvloop is pinned, but the CA works without it
            pass
        source = ConfigSource(config_file, given) if config_file is not None else None
        asyncio.run(_serve(config, source, log_level))
    except MeshwardError as exc:
        raise click.ClickException(str(exc)) from exc


async def _serve(config: CaConfig, source: ConfigSource | None, log_level: str) -> None:
    from ca.supervisor import serve as run

    await run(config, _announce, log_level, source)


def _announce(line: str) -> None:
    click.echo(line)  # click flushes, so a parent reading our stdout sees it at once


@ca.command("join-token")
@click.option("--node", required=True, help="the node name the token is bound to")
@click.option("--state-dir", default=DEFAULT_STATE_DIR, show_default=True)
@click.option("--ttl", default="1h", show_default=True, help="how long the token is valid")
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    help="write the token to this file (mode 0600) instead of printing it",
)
def join_token(node: str, state_dir: str, ttl: str, out: Path | None) -> None:
    """Create a single-use join token for NODE's first SVID and print it (or write it to --out).

    The agent takes it with `--join-token-file FILE` or on stdin (`--join-token-file -`), never
    as an argument: a command line is readable by every local user."""
    from ca.authority import ensure_state_dir, write_private
    from ca.join_tokens import JoinTokenStore

    if out is not None and not out.parent.is_dir():  # before a token is minted for nothing
        raise click.ClickException(f"--out {out}: cannot write: No such file or directory")
    try:
        lifetime = parse_duration(ttl, "--ttl")
        path = Path(state_dir)
        ensure_state_dir(path)
        token = JoinTokenStore(path).create(node, lifetime, utc_now())
        if out is not None:
            write_private(out, f"{token}\n".encode())
    except MeshwardError as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:
        raise click.ClickException(f"--out {out}: cannot write: {exc.strerror}") from exc
    if out is None:
        click.echo(token)
    else:
        click.echo(f"wrote the join token for {node} to {out} (mode 0600)", err=True)


@ca.command("rotate-root")
@click.option("--state-dir", default=DEFAULT_STATE_DIR, show_default=True)
@click.option(
    "--grace",
    default="1h",
    show_default=True,
    help="how long the new root is trusted before the CA signs with it",
)
def rotate_root(state_dir: str, grace: str) -> None:
    """Rotate the self-signed root with no outage (the running CA follows the schedule)."""
    from ca.root_rotation import start_rotation

    try:
        line = start_rotation(Path(state_dir), parse_duration(grace, "--grace"), utc_now())
    except MeshwardError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(line)


@ca.command("dev-certs")
@click.option("--out", default="certs-dev", show_default=True, type=click.Path(path_type=Path))
@click.option("--trust-domain", default=DEFAULT_TRUST_DOMAIN, show_default=True)
@click.option("--cluster", default="cluster1", show_default=True, help="intermediate's directory")
def dev_certs(out: Path, trust_domain: str, cluster: str) -> None:
    """Write a dev root and an intermediate (plug-in CA layout) like Istio's tools/certs."""
    from ca.dev_certs import write_dev_certs

    try:
        for path in write_dev_certs(out, trust_domain, cluster, utc_now()):
            click.echo(f"wrote {path}")
    except (MeshwardError, ConfigError) as exc:
        raise click.ClickException(str(exc)) from exc


@ca.group("bundle")
def bundle() -> None:
    """This trust domain's bundle, as its SPIFFE bundle endpoint serves it."""


@bundle.command("show")
@click.option("--state-dir", default=DEFAULT_STATE_DIR, show_default=True)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["spiffe", "pem"]),
    default="spiffe",
    show_default=True,
    help="a SPIFFE bundle (JWK Set) or PEM roots",
)
def bundle_show(state_dir: str, fmt: str) -> None:
    """Print the bundle another mesh configures as its initial `trust-bundle` for federating
    with this one (what `spire-server bundle show -format spiffe` prints)."""
    from ca.bundle_endpoint import stored_bundle

    try:
        data = stored_bundle(Path(state_dir), fmt)
    except MeshwardError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(data.decode(), nl=False)
