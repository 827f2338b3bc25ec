"""sidecar_tls: see README.md."""
