"""The control plane on Kubernetes: mesh state from the API server, node agents by their tokens."""

# The API objects the policy engine refused ({"Kind/namespace/name": why}), in the CA's state dir:
# what `meshward check` reports. Named here so readers need not import the Kubernetes client.
REFUSED_FILE = "kubernetes-refused.json"
