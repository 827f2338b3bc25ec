"""The sidecar's connection handling: listeners and socket adapters (`net`), the outbound (15001)
and inbound (15006) proxies, and the pool of verified mTLS connections to peer sidecars. Per
connection they verify identities and pick a codec; the codecs handle the requests."""

from sidecar_tls._compiled import extend_path

# The compiled hot path (sidecar_tls/_compiled.py), when built and current, comes first.
__path__ = extend_path(__path__, __name__)
