"""The four demo services as aiohttp applications.

`productpage` calls `details` and `reviews` over HTTP; `reviews` (v1 and v2) calls `ratings` over
gRPC (`meshward.demo.Ratings/GetRating`, served by ratings beside its HTTP API; an `http://` upstream
makes it HTTP again). Every answer is JSON with the service's data, the headers it received, the
caller identity taken from `x-forwarded-client-cert`, the trace id, and (for callers) the answers
of the services it called, so one `curl` of the ingress shows every hop.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from meshward.demo import GRPC_PORT, ratings_grpc
from meshward.demo.propagation import caller_identity, headers_to_forward, trace_id_of
from meshward_common.errors import ConfigError

SERVICES = ("productpage", "details", "reviews", "ratings")
# Who calls whom: the upstreams each service needs a base URL for.
CALLS: Mapping[str, tuple[str, ...]] = {
    "productpage": ("details", "reviews"),
    "reviews": ("ratings",),
    "details": (),
    "ratings": (),
}
DEFAULT_PORT = 9080
# Who is called over gRPC unless told otherwise (`--upstream ratings=http://ratings:9080`).
DEFAULT_UPSTREAMS: Mapping[str, str] = {"ratings": f"grpc://ratings:{GRPC_PORT}"}
GRPC_SERVICES = ("ratings",)  # the services with a gRPC API
UPSTREAM_TIMEOUT_S = 5.0

_BOOK = {
    "id": 0,
    "title": "The Comedy of Errors",
    "author": "William Shakespeare",
    "year": 1595,
    "type": "paperback",
    "pages": 200,
}
_REVIEWS = [
    {"reviewer": "Reviewer1", "text": "An extremely entertaining play by Shakespeare."},
    {"reviewer": "Reviewer2", "text": "Absolutely fun and entertaining."},
]


@dataclass(frozen=True)
class DemoConfig:
    service: str
    version: str = "v1"
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    # service name -> base URL; defaults to http://<name>:9080 (ratings: grpc://ratings:9090),
    # resolved by the pod's hosts file.
    upstreams: Mapping[str, str] = field(default_factory=dict)
    # Pods share the host's UTS namespace, so the hostname does not tell them apart.
    pod: str = field(default_factory=socket.gethostname)
    grpc_port: int = GRPC_PORT  # ratings only: where it serves gRPC (0: it does not)

    def __post_init__(self) -> None:
        if self.service not in SERVICES:
            raise ConfigError(
                f"demo: unknown service {self.service!r} (known: {', '.join(SERVICES)})"
            )
        for name, url in self.upstreams.items():
            target = ratings_grpc.grpc_target(url)
            if target is None and not url.startswith(("http://", "https://")):
                raise ConfigError(
                    f"demo: upstream {name}={url}: the URL must start with http:// or grpc://"
                )
            if target is not None and name not in GRPC_SERVICES:
                raise ConfigError(
                    f"demo: upstream {name}={url}: only {', '.join(GRPC_SERVICES)} serves gRPC"
                )
            if target == "":
                raise ConfigError(f"demo: upstream {name}={url}: no host:port after grpc://")

    def upstream(self, name: str) -> str:
        default = DEFAULT_UPSTREAMS.get(name, f"http://{name}:{DEFAULT_PORT}")
        return self.upstreams.get(name, default).rstrip("/")


_SESSION = web.AppKey("session", aiohttp.ClientSession)
_CONFIG = web.AppKey("config", DemoConfig)
_RATINGS_CHANNEL: web.AppKey[Any] = web.AppKey("ratings_channel")  # a grpc.aio.Channel


def _envelope(config: DemoConfig, request: web.Request, data: Any) -> dict[str, Any]:
    headers = {k.lower(): v for k, v in request.headers.items()}
    return {
        "service": config.service,
        "version": config.version,
        "pod": config.pod,
        "identity": caller_identity(headers),
        "trace_id": trace_id_of(headers),
        "received_headers": headers,
        "data": data,
    }


async def _call(request: web.Request, name: str, path: str) -> dict[str, Any]:
    """GET an upstream with the trace headers forwarded; failures become data, not exceptions."""
    config = request.app[_CONFIG]
    url = config.upstream(name) + path
    forward = headers_to_forward(request.headers)
    try:
        async with request.app[_SESSION].get(url, headers=forward) as resp:
            body = await resp.text()
            try:
                payload: Any = await resp.json(content_type=None)
            except ValueError:
                payload = None
            if resp.status == 200 and isinstance(payload, dict):
                return {"status": resp.status, **payload}
            return {"status": resp.status, "service": name, "error": body.strip()[:200]}
    except (aiohttp.ClientError, TimeoutError) as exc:
        return {"status": 503, "service": name, "error": f"{type(exc).__name__}: {exc}"}


def _hops(response: Mapping[str, Any]) -> list[dict[str, str]]:
    """Flatten the call tree into one line per hop: who served, who called."""
    out = [
        {
            "service": str(response.get("service", "")),
            "version": str(response.get("version", "")),
            "caller": str(response.get("identity", {}).get("caller", "")),
            "status": str(response.get("status", 200)),
            "protocol": str(response.get("protocol", "http")),
        }
    ]
    for key in ("details", "reviews", "ratings"):
        child = (
            response.get("data", {}).get(key) if isinstance(response.get("data"), dict) else None
        )
        if isinstance(child, dict) and "service" in child:
            out.extend(_hops(child))
    return out


async def productpage(request: web.Request) -> web.Response:
    config = request.app[_CONFIG]
    details = await _call(request, "details", "/details/0")
    reviews = await _call(request, "reviews", "/reviews/0")
    body = _envelope(
        config, request, {"product": _BOOK["title"], "details": details, "reviews": reviews}
    )
    body["hops"] = _hops(body)
    return web.json_response(body, dumps=_dumps)


async def details(request: web.Request) -> web.Response:
    book = {**_BOOK, "id": int(request.match_info["id"])}
    return web.json_response(_envelope(request.app[_CONFIG], request, book), dumps=_dumps)


async def reviews(request: web.Request) -> web.Response:
    config = request.app[_CONFIG]
    product = int(request.match_info["id"])
    channel = request.app.get(_RATINGS_CHANNEL)
    if channel is None:
        ratings = await _call(request, "ratings", f"/ratings/{product}")
    else:
        forward = headers_to_forward(request.headers)
        ratings = await ratings_grpc.get_rating(channel, product, forward, UPSTREAM_TIMEOUT_S)
    scores = ratings.get("data", {}).get("ratings", {}) if ratings.get("status") == 200 else {}
    # As in bookinfo, v2 shows black stars; v1 shows the plain score.
    color = "black" if config.version == "v2" else ""
    items = [
        {**r, "rating": {"stars": scores.get(r["reviewer"]), "color": color}} for r in _REVIEWS
    ]
    data = {"id": product, "reviews": items, "ratings": ratings}
    return web.json_response(_envelope(config, request, data), dumps=_dumps)


async def ratings(request: web.Request) -> web.Response:
    data = {"id": int(request.match_info["id"]), "ratings": ratings_grpc.RATINGS}
    return web.json_response(_envelope(request.app[_CONFIG], request, data), dumps=_dumps)


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=False) + "\n"


async def _session_ctx(app: web.Application) -> Any:
    timeout = aiohttp.ClientTimeout(total=UPSTREAM_TIMEOUT_S)
    # Each app's own calls go out plainly; the pod's sidecar adds mTLS (that is the point).
    async with aiohttp.ClientSession(timeout=timeout) as session:
        app[_SESSION] = session
        yield


async def _ratings_channel_ctx(app: web.Application) -> Any:
    target = ratings_grpc.grpc_target(app[_CONFIG].upstream("ratings"))
    if target is None:
        yield
        return
    channel = ratings_grpc.open_channel(target)
    app[_RATINGS_CHANNEL] = channel
    try:
        yield
    finally:
        await channel.close()


async def _grpc_server_ctx(app: web.Application) -> Any:
    """ratings' gRPC service, started before its HTTP port listens (so an app that answers
    /healthz serves both)."""
    config = app[_CONFIG]
    server = await ratings_grpc.start_server(
        config.host, config.grpc_port, config.version, config.pod
    )
    try:
        yield
    finally:
        await server.stop(grace=1.0)


_ROUTES = {
    "productpage": [("/productpage", productpage), ("/", productpage)],
    "details": [("/details/{id:\\d+}", details)],
    "reviews": [("/reviews/{id:\\d+}", reviews)],
    "ratings": [("/ratings/{id:\\d+}", ratings)],
}


def make_app(config: DemoConfig) -> web.Application:
    app = web.Application()
    app[_CONFIG] = config
    app.cleanup_ctx.append(_session_ctx)
    if config.service == "reviews":
        app.cleanup_ctx.append(_ratings_channel_ctx)
    if config.service == "ratings" and config.grpc_port:
        app.cleanup_ctx.append(_grpc_server_ctx)
    app.router.add_get("/healthz", healthz)
    for path, handler in _ROUTES[config.service]:
        app.router.add_get(path, handler)
    return app
