"""node_agent: one per node, istio-agent's and SPIRE agent's job (`meshward agent run`).

front_door.py     public Unix socket; attests each connection, relays it to the gRPC server
attestation.py    kernel facts (SO_PEERCRED, SO_PEERPIDFD, /proc) matched against the registry
workload_api.py   SPIFFE Workload API (X.509) + the MeshDiscovery relay, grpc.aio servicers
workload_svids.py per-workload keys (memory only), CA calls, rotation loops
state.py          bundle, SVIDs, mesh state, and the change notifier every stream waits on
rotation.py       RotationSchedule: half-life with jitter, full-jitter backoff (pure)
node_identity.py  node key and SVID in the state dir (0600), expiry check
ca_client.py      CreateCertificate / StreamMeshState client with the secure-naming check
ca_link.py        the one channel to the CA: rebuilt after failures, retired on renewal
config.py, cli.py options (flags or YAML) and the click group `agent`
agent.py          wires it together: bootstrap, renewal, registry stream, serving, shutdown
"""
