"""sidecar_tls: see README.md."""

from sidecar_tls._compiled import extend_path

# The compiled hot path (sidecar_tls/_compiled.py), when built and current, comes first.
__path__ = extend_path(__path__, __name__)
