"""The sidecar's telemetry: the contract between the data path and its observers (`observe`),
Istio's Prometheus metrics, OpenTelemetry tracing with Istio's sampling, and OTLP/HTTP export.
The data path imports only `observe`."""
