"""The HTTP/2 codec, on the `h2` library (framing, HPACK, flow control): header blocks as pure
functions (`headers`), one connection as an asyncio protocol (`connection`), the bridge between a
downstream stream and an upstream one (`streams`), and the upstream connections of one
destination with their stream slots (`upstreams`). gRPC is HTTP/2 with trailers: every stream
kind is carried the same way."""

from sidecar_tls._compiled import extend_path

# The compiled hot path (sidecar_tls/_compiled.py), when built and current, comes first.
__path__ = extend_path(__path__, __name__)
