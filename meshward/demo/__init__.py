"""A small bookinfo-like demo: productpage calls details and reviews, reviews calls ratings.

Every app answers with its data plus the headers it received (so `x-forwarded-client-cert` shows
who called) and forwards the trace headers on its own calls, as Istio's bookinfo does.
"""

# ratings serves its gRPC API (meshward.demo.Ratings) here; named once for the apps and the mesh.
GRPC_PORT = 9090
