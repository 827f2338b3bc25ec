"""node_agent: see README.md."""
