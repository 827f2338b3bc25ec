"""Starting an aiohttp application on an HTTPS port, as the control plane's small HTTPS servers
do (the injection webhook, the SPIFFE bundle endpoint): a port already in use is one line naming
the option, and port 0 gets the port the kernel picked."""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any

from meshward_common.errors import ConfigError

if TYPE_CHECKING:
    from aiohttp import web


async def start_https_site(
    app: web.Application, host: str, port: int, ssl_context: ssl.SSLContext, what: str
) -> tuple[web.AppRunner, int]:
    """Serve `app`; returns its runner (`await runner.cleanup()` stops it) and the bound port.
    `what` names the option for the error line (`webhook`, `bundle-endpoint-listen`)."""
    from aiohttp import web

    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"{what}: cannot listen on {host}:{port}: {exc.strerror}") from exc
    server: Any = site._server  # aiohttp keeps the bound sockets here; port 0 picks one
    if server is not None and getattr(server, "sockets", None):
        port = server.sockets[0].getsockname()[1]
    return runner, port
