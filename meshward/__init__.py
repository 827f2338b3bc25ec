"""meshward's CLI and local-mesh launcher: sits on top of every component."""
