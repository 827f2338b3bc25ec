"""All metric and span names in one place (as SPIRE's telemetry/names.go), Istio's where they exist."""

from __future__ import annotations

# Sidecar (Istio standard metrics).
REQUESTS_TOTAL = "istio_requests_total"
REQUEST_DURATION_MS = "istio_request_duration_milliseconds"
TCP_OPENED_TOTAL = "istio_tcp_connections_opened_total"
TCP_CLOSED_TOTAL = "istio_tcp_connections_closed_total"
SVID_EXPIRY_SECONDS = "meshward_svid_expiry_timestamp_seconds"

# Control plane.
CA_CERTS_ISSUED = "meshward_ca_certificates_issued_total"
CA_CERTS_REFUSED = "meshward_ca_certificates_refused_total"
CA_CSR_LATENCY = "meshward_ca_csr_duration_seconds"
CA_ROTATION_PHASE = "meshward_ca_root_rotation_phase"  # 1 for the phase in force
CA_BUNDLE_ROOTS = "meshward_ca_trust_bundle_roots"
CA_ROOT_EXPIRY = "meshward_ca_root_expiry_timestamp_seconds"
CA_KUBE_REFUSED = "meshward_ca_kubernetes_refused_objects"  # by kind
CA_FEDERATED_ROOTS = "meshward_ca_federated_bundle_roots"  # by trust domain in force
CA_FEDERATED_REFRESH_OK = "meshward_ca_federated_bundle_refresh_ok"  # 0: last refresh failed
CA_CONFIG_REFUSED = "meshward_ca_config_refused"  # 1: the config file's last edit is refused
CA_CONFIG_RESTART_PENDING = "meshward_ca_config_restart_pending"  # keys waiting for a restart

# Node agent.
AGENT_ROTATIONS = "meshward_agent_svid_rotations_total"
AGENT_STREAMS_OPEN = "meshward_agent_workload_api_streams"


# Tracing: Istio's sidecars name the tracing service "<service>.<namespace>".
def trace_service_name(service: str, namespace: str) -> str:
    return f"{service}.{namespace}"
