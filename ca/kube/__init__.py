"""The control plane on Kubernetes: mesh state from the API server, node agents by their tokens."""
