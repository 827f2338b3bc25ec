"""ca: the control plane (Istio's istiod security role) — a CA, the registry, policy distribution.

Pure cores (time passed in):
  issuer        CSR checks and X.509-SVID signing           entitlement  who may get which identity
  leaf_der      a leaf's DER from per-signer parts          rate_limit   per-node token buckets
  authority     root / plug-in CA key material, dev roots   mesh_state   MeshState from files
Shared state of the CA's processes:
  store         SQLite `ca.db`: join tokens, published snapshots
  published     what the supervisor publishes, as workers read it
Adapters:
  join_tokens   single-use node bootstrap tokens            audit        JSON-lines audit log
  front_door    TLS port, optional client certs -> gRPC     service      gRPC servicers
  server        one worker's servers (and all in one process)
  publisher     the supervisor's sources -> published       supervisor   the worker processes
  worker        `python -m ca.worker`                       cli          `meshward ca ...`
  config        flags / YAML config, validated at start     metrics      Prometheus definitions
"""
