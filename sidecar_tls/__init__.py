"""sidecar_tls: see README.md."""

from sidecar_tls._compiled import extend_path, put_libraries_first

# The compiled hot path (sidecar_tls/_compiled.py), when built and current, comes first; so do
# the compiled HTTP/2 libraries, before anything here imports them.
__path__ = extend_path(__path__, __name__)
put_libraries_first()
