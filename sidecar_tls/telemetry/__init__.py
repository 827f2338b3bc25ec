"""The sidecar's telemetry: the contract between the data path and its observers (`observe`),
Istio's Prometheus metrics, OpenTelemetry tracing with Istio's sampling, and OTLP/HTTP export.
The data path imports only `observe`."""

from sidecar_tls._compiled import extend_path

# The compiled hot path (sidecar_tls/_compiled.py), when built and current, comes first.
__path__ = extend_path(__path__, __name__)
