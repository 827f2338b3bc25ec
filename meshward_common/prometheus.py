"""Serving a Prometheus registry, the same way for every long-running meshward process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, start_http_server


def start_metrics_server(host: str, port: int, registry: CollectorRegistry) -> tuple[str, int]:
    """Serve `registry` at /metrics over HTTP in a daemon thread (prometheus_client's server);
    returns the bound (host, port), port 0 meaning any free one."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    bound_host, bound_port = server.server_address[:2]
    return str(bound_host), int(bound_port)
