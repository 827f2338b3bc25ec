"""The HTTP/1.1 codec: message heads as pure functions (`head`), where a body ends (`body`), and
the callback-based relay that carries requests and responses between two connections (`relay`)."""

from sidecar_tls._compiled import extend_path

# The compiled hot path (sidecar_tls/_compiled.py), when built and current, comes first.
__path__ = extend_path(__path__, __name__)
