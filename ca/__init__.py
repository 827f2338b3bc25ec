"""ca: the control plane (Istio's istiod security role) — a CA, the registry, policy distribution.

Pure cores (time passed in):
  issuer        CSR checks and X.509-SVID signing           entitlement  who may get which identity
  authority     root / plug-in CA key material, dev roots   rate_limit   per-node token buckets
  mesh_state    MeshState from registry + policy files      durations    `30s`, `10m`, `24h`
Adapters:
  join_tokens   single-use node bootstrap tokens (file)     audit        JSON-lines audit log
  front_door    TLS port, optional client certs -> gRPC     service      gRPC servicers
  server        assembles and runs it                       cli          `meshward ca ...`
  config        flags / YAML config, validated at start     metrics      Prometheus definitions
"""
