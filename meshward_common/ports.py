"""Istio's well-known ports, used unchanged so users' firewall rules and habits carry over."""

from __future__ import annotations

OUTBOUND = 15001
INBOUND = 15006
TUNNEL = 15008
ADMIN = 15000
HEALTH = 15021
AGENT_STATUS = 15020
PROMETHEUS = 15090
CONTROL_PLANE = 15012
PROXY_UID = 1337
PROXY_GID = 1337
# On Kubernetes, the sidecar's container name (Istio's): the one container that gets the identity.
PROXY_CONTAINER = "istio-proxy"
# Envoy's source address for inbound passthrough connections to the app.
INBOUND_PASSTHROUGH_SOURCE = "127.0.0.6"
JAEGER_OTLP_HTTP = 4318
JAEGER_QUERY = 16686
