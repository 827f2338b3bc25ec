"""The sidecar's client of the node agent's Workload API socket: a small gRPC server-streaming
client on `h2` (`grpc_stream`), the X509SVIDResponse wire format, and the mesh state stream."""
