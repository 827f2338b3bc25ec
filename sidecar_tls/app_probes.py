"""The app's own HTTP probes, answered on the status port (15020) as Istio's pilot-agent does.

The injector rewrites each httpGet probe of the app to `:15020/app-health/<container>/<kind>` and
passes the originals in `ISTIO_KUBE_APP_PROBERS` (JSON: path -> {"httpGet": {path, port, scheme,
httpHeaders}, "timeoutSeconds"}). The kubelet reaches 15020 because it is never captured; the
sidecar then calls the app on the pod's IP from 127.0.0.6 (the inbound passthrough source, which
the capture rules let through) and answers with the app's status: the app's probe, kept working
under STRICT mTLS. `parse_probers` is pure; `serve_app_probes` is the thin server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import ssl
from dataclasses import dataclass

from meshward_common import ports
from meshward_common.errors import ConfigError
from sidecar_tls.admin import HEAD_TIMEOUT_S, MAX_HEAD_BYTES, HttpServer, Reply, render, text_reply

log = logging.getLogger(__name__)
_REQUEST_RE = re.compile(r"(GET|HEAD) (/\S*) HTTP/1\.[01]")
_STATUS_RE = re.compile(rb"HTTP/1\.[01] (\d{3})")
_HEADER_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


@dataclass(frozen=True)
class AppProbe:
    path: str
    port: int
    scheme: str = "HTTP"
    headers: tuple[tuple[str, str], ...] = ()
    timeout_s: float = 1.0


def parse_probers(text: str) -> dict[str, AppProbe]:
    """ISTIO_KUBE_APP_PROBERS to path -> probe; ConfigError names the entry that is wrong."""
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"app probers: not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError("app probers: must be a JSON object of path -> probe")
    out: dict[str, AppProbe] = {}
    for path, entry in data.items():
        where = f"app probers: {path}"
        if not path.startswith("/app-health/") or not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected /app-health/<container>/<kind> -> probe")
        get = entry.get("httpGet")
        if not isinstance(get, dict):
            raise ConfigError(f"{where}: no httpGet")
        port = get.get("port")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ConfigError(f"{where}: port {port!r} is not a port number")
        scheme = str(get.get("scheme", "HTTP")).upper()
        if scheme not in ("HTTP", "HTTPS"):
            raise ConfigError(f"{where}: scheme {scheme!r} is not HTTP or HTTPS")
        target = str(get.get("path") or "/")
        if not target.startswith("/") or any(c in target for c in "\r\n "):
            raise ConfigError(f"{where}: path {target!r} is not an absolute path")
        headers = []
        for h in get.get("httpHeaders") or []:
            name, value = str(h.get("name", "")), str(h.get("value", ""))
            if not _HEADER_RE.match(name) or "\r" in value or "\n" in value:
                raise ConfigError(f"{where}: header {name!r} is not a valid header")
            headers.append((name, value))
        timeout = entry.get("timeoutSeconds", 1)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise ConfigError(f"{where}: timeoutSeconds {timeout!r} is not a positive number")
        out[path] = AppProbe(target, port, scheme, tuple(headers), float(timeout))
    return out


def probe_request(probe: AppProbe, host: str) -> bytes:
    lines = [
        f"GET {probe.path} HTTP/1.1",
        f"Host: {host}:{probe.port}",
        "User-Agent: kube-probe/meshward",
    ]
    lines += [f"{name}: {value}" for name, value in probe.headers]
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def reply_for_status(status: int | None, path: str) -> Reply:
    """Istio answers with the app's own status; no answer at all is a 503."""
    if status is None:
        return text_reply(f"app probe {path}: no answer from the app\n", 503)
    return Reply(status, b"", "text/plain; charset=utf-8")


async def run_probe(probe: AppProbe, pod_ip: str, source: str) -> int | None:
    """The app's HTTP status for `probe`, or None when it does not answer within the timeout."""
    context = None
    if probe.scheme == "HTTPS":
        # The kubelet does not verify an app's probe certificate either.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        async with asyncio.timeout(probe.timeout_s):
            reader, writer = await asyncio.open_connection(
                pod_ip, probe.port, ssl=context, local_addr=(source, 0)
            )
            try:
                writer.write(probe_request(probe, pod_ip))
                await writer.drain()
                line = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
    except (OSError, TimeoutError, ssl.SSLError, asyncio.IncompleteReadError):
        return None
    m = _STATUS_RE.match(line)
    return int(m.group(1)) if m else None


async def serve_app_probes(
    probers: dict[str, AppProbe],
    pod_ip: str,
    bind: str,
    port: int = ports.AGENT_STATUS,
    source: str = ports.INBOUND_PASSTHROUGH_SOURCE,
) -> HttpServer:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
            line = head.split(b"\r\n", 1)[0].decode("latin-1")
            m = _REQUEST_RE.fullmatch(line)
            if m is None:
                reply = text_reply("only GET/HEAD of /app-health/... are served here\n", 400)
            elif (probe := probers.get(m.group(2).split("?", 1)[0])) is None:
                reply = text_reply(f"no app probe {m.group(2)}\n", 404)
            else:
                reply = reply_for_status(await run_probe(probe, pod_ip, source), m.group(2))
            writer.write(render(reply, m is not None and m.group(1) == "HEAD"))
            await writer.drain()
        except asyncio.LimitOverrunError:
            writer.write(render(text_reply("request head too large\n", 400), False))
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    try:
        server = await asyncio.start_server(handle, bind, port, limit=MAX_HEAD_BYTES)
    except OSError as exc:
        raise ConfigError(f"cannot serve app probes on {bind}:{port}: {exc.strerror}") from exc
    return HttpServer(server)
