"""The sidecar's small HTTP surfaces: `:15021/healthz/ready` (ready once the SVID is loaded and the
listeners are up) and the pod-local admin on `127.0.0.1:15000` (`/certs`: the current SVID;
`/config_dump`: what the sidecar runs with).

Served by a tiny asyncio server rather than aiohttp (which costs ~10 MB RSS per sidecar): GET/HEAD
only, small bodies, one request per connection, so only the request line is parsed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization

from meshward_common.errors import ConfigError
from sidecar_tls.state import SidecarState

log = logging.getLogger(__name__)


def certs_view(state: SidecarState) -> dict[str, Any]:
    """The current SVID as `istioctl proxy-config secret` users expect: ID, serial, validity, chain."""
    if not state.ready:
        return {"certificates": []}
    identity = state.material.identity
    chain = []
    for cert in identity.chain:
        chain.append(
            {
                "subject": cert.subject.rfc4514_string(),
                "issuer": cert.issuer.rfc4514_string(),
                "serial_number": format(cert.serial_number, "x"),
                "valid_from": cert.not_valid_before_utc.isoformat(),
                "expiration_time": cert.not_valid_after_utc.isoformat(),
                "pem": cert.public_bytes(serialization.Encoding.PEM).decode(),
            }
        )
    leaf = identity.leaf
    return {
        "certificates": [
            {
                "name": "default",
                "spiffe_id": str(identity.spiffe_id),
                "serial_number": format(leaf.serial_number, "x"),
                "valid_from": leaf.not_valid_before_utc.isoformat(),
                "expiration_time": leaf.not_valid_after_utc.isoformat(),
                "cert_chain": chain,
                "trust_domains": sorted(identity.bundles),
                "root_certs": [
                    {
                        "trust_domain": td,
                        "subject": root.subject.rfc4514_string(),
                        "serial_number": format(root.serial_number, "x"),
                        "expiration_time": root.not_valid_after_utc.isoformat(),
                    }
                    for td, roots in sorted(identity.bundles.items())
                    for root in roots
                ],
            }
        ]
    }


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: str = "application/json"


Route = Callable[[], Reply]
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 500:
            "Internal Server Error", 503: "Service Unavailable"}  # fmt: skip
MAX_HEAD_BYTES = 16 * 1024
_REQUEST_LINE_RE = re.compile(r"([A-Z]{1,16}) (/\S*) HTTP/1\.[01]")
HEAD_TIMEOUT_S = 10.0  # a client that never finishes its request head is dropped


def json_reply(value: Any, status: int = 200) -> Reply:
    return Reply(status, json.dumps(value, indent=1).encode() + b"\n")


def text_reply(text: str, status: int = 200) -> Reply:
    return Reply(status, text.encode(), "text/plain; charset=utf-8")


def health_app(ready: Callable[[], bool]) -> dict[str, Route]:
    def readiness() -> Reply:
        return text_reply("ready\n") if ready() else text_reply("not ready\n", 503)

    return {"/healthz/ready": readiness}


def admin_app(state: SidecarState, config: Callable[[], dict[str, Any]]) -> dict[str, Route]:
    return {
        "/certs": lambda: json_reply(certs_view(state)),
        "/config_dump": lambda: json_reply(config()),
    }


def route_request(routes: Mapping[str, Route], head: bytes) -> tuple[Reply, bool]:
    """(reply, is HEAD) for one request head: the pure part of the server. Only the request line
    matters: GET/HEAD carry no body and every reply closes the connection."""
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    m = _REQUEST_LINE_RE.fullmatch(line)
    if m is None:
        return text_reply(f"malformed request line {line[:80]!r}\n", 400), False
    method, target = m.group(1), m.group(2)
    if method not in ("GET", "HEAD"):
        return text_reply(f"method {method} not allowed\n", 405), False
    route = routes.get(target.split("?", 1)[0])
    if route is None:
        return text_reply(f"no such path: {target}\n", 404), method == "HEAD"
    try:
        return route(), method == "HEAD"
    except Exception as exc:  # a bug in one view must not take the admin server down
        log.exception("admin route %s failed", target)
        return text_reply(f"internal error: {type(exc).__name__}\n", 500), False


def render(reply: Reply, head_only: bool) -> bytes:
    head = (
        f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Unknown')}\r\n"
        f"content-type: {reply.content_type}\r\ncontent-length: {len(reply.body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode() + (b"" if head_only else reply.body)


class HttpServer:
    """A listening admin/health server; `cleanup()` stops it (same shape as aiohttp's runner)."""

    def __init__(self, server: asyncio.Server) -> None:
        self._server = server

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [sock.getsockname()[:2] for sock in self._server.sockets]

    @property
    def port(self) -> int:
        return self.addresses[0][1]

    async def cleanup(self) -> None:
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2.0)


async def serve_app(routes: Mapping[str, Route], host: str, port: int) -> HttpServer:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
            writer.write(render(*route_request(routes, head)))
            await writer.drain()
        except asyncio.LimitOverrunError:
            writer.write(render(text_reply("request head too large\n", 400), False))
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass  # the client went away or stalled: nothing to answer
        finally:
            writer.close()

    try:
        server = await asyncio.start_server(handle, host, port, limit=MAX_HEAD_BYTES)
    except OSError as exc:
        raise ConfigError(f"cannot serve HTTP on {host}:{port}: {exc.strerror}") from exc
    return HttpServer(server)
