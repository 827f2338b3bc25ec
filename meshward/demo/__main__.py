"""`python -m meshward.demo SERVICE [--version v1] [--port 9080] [--grpc-port 9090]
[--upstream name=URL ...]`."""

from __future__ import annotations

import sys

import click
from aiohttp import web

from meshward.demo import GRPC_PORT
from meshward.demo.apps import DEFAULT_PORT, SERVICES, DemoConfig, make_app
from meshward_common.errors import MeshwardError
from meshward_common.logs import setup


@click.command()
@click.argument("service", type=click.Choice(SERVICES))
@click.option("--version", "version", default="v1", show_default=True)
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--grpc-port",
    default=GRPC_PORT,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="ratings: also serve meshward.demo.Ratings over gRPC on this port (0: not)",
)
@click.option("--pod", default=None, help="pod name shown in answers (default: hostname)")
@click.option(
    "--upstream",
    "upstreams",
    multiple=True,
    metavar="NAME=URL",
    help="base URL of an upstream service (default http://NAME:9080; ratings: grpc://ratings:9090)",
)
def main(
    service: str,
    version: str,
    host: str,
    port: int,
    grpc_port: int,
    pod: str | None,
    upstreams: tuple[str, ...],
) -> None:
    """Run one demo service."""
    mapping: dict[str, str] = {}
    for item in upstreams:
        name, sep, url = item.partition("=")
        if not sep or not name or not url:
            raise click.BadParameter(f"{item!r} is not NAME=URL", param_hint="--upstream")
        mapping[name] = url
    setup(f"demo-{service}")
    extra = {"pod": pod} if pod else {}
    try:
        config = DemoConfig(service, version, host, port, mapping, grpc_port=grpc_port, **extra)
        web.run_app(make_app(config), host=host, port=port, print=None, access_log=None)
    except (MeshwardError, OSError) as exc:  # a bad flag, a port taken: one line, no traceback
        click.echo(f"demo-{service}: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
