"""The control plane's configuration: flags or one YAML file with the same keys, validated at start.

listen: 127.0.0.1:15012
state-dir: /var/lib/meshward/ca
trust-domain: cluster.local
registry: /etc/meshward/registry.yaml
policy-dir: /etc/meshward/policies
service-entry-dir: /etc/meshward/service-entries  # Istio ServiceEntry YAML (federated services)
plugin-ca-dir: /etc/meshward/cacerts
workload-ttl: 24h
max-ttl: 24h
root-namespace: istio-system
rate-limit: 500          # CSRs per second per node, sustained
rate-burst: 1000
workers: 2               # serving processes (default: the cores this process may run on)
webhook-listen: 0.0.0.0:15017  # the sidecar injection webhook (default: off)
injector-config: /etc/meshward/injector/config.yaml
mtls-listen: 127.0.0.1:15013   # optional: node SVIDs only, served natively (no relay)
handshake-timeout: 10s   # TLS handshake on the listen port
idle-timeout: 5m         # a connection that sends nothing this long is closed
max-connections: 4096    # per worker, held at once (lowered to what its descriptor limit allows)
max-connections-per-source: 64   # per worker and client address
bundle-endpoint-listen: 0.0.0.0:8443  # this trust domain's SPIFFE bundle endpoint (default: off)
bundle-endpoint-refresh-hint: 5m      # the spiffe_refresh_hint it serves
federates-with:          # foreign trust domains whose bundles we fetch (ca/federation_config.py)
  b.example:
    bundle-endpoint-url: https://10.0.0.2:8443/
    endpoint-spiffe-id: spiffe://b.example/meshward/control-plane
    trust-bundle: /etc/meshward/federation/b.example.json
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ca.federation_config import FederationRelationship, parse_federates_with
from ca.kube import rbac
from ca.rate_limit import DEFAULT_BURST, DEFAULT_RATE
from meshward_common import ports
from meshward_common.addresses import join_host_port, parse_host_port
from meshward_common.durations import parse_duration
from meshward_common.errors import ConfigError, SpiffeIdError
from meshward_common.spiffe_id import DEFAULT_TRUST_DOMAIN, validate_name, validate_trust_domain
from meshward_common.yaml_lines import LineDict, load_file
from policy.model import DEFAULT_ROOT_NAMESPACE

DEFAULT_LISTEN = f"127.0.0.1:{ports.CONTROL_PLANE}"
DEFAULT_STATE_DIR = "/var/lib/meshward/ca"
DEFAULTS: dict[str, Any] = {
    "listen": DEFAULT_LISTEN,
    "state-dir": DEFAULT_STATE_DIR,
    "trust-domain": DEFAULT_TRUST_DOMAIN,
    "registry": None,
    "policy-dir": None,
    "service-entry-dir": None,
    "plugin-ca-dir": None,
    "workload-ttl": "24h",
    "max-ttl": "24h",
    "root-namespace": DEFAULT_ROOT_NAMESPACE,
    "rate-limit": DEFAULT_RATE,
    "rate-burst": DEFAULT_BURST,
    "metrics-listen": None,
    "webhook-listen": None,
    "injector-config": None,
    "workers": None,
    "mtls-listen": None,
    "root-rotation-grace": "1h",
    "handshake-timeout": "10s",
    "idle-timeout": "5m",
    "max-connections": 4096,
    "max-connections-per-source": 64,
    "kubernetes": False,
    "kubeconfig": None,
    "agent-service-account": f"{rbac.CONTROL_PLANE_NAMESPACE}/{rbac.NODE_AGENT_SERVICE_ACCOUNT}",
    "token-audience": rbac.TOKEN_AUDIENCE,
    "bundle-endpoint-listen": None,
    "bundle-endpoint-refresh-hint": "5m",
    "federates-with": None,
}


@dataclass(frozen=True)
class CaConfig:
    host: str
    port: int
    state_dir: Path
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    registry: Path | None = None
    policy_dir: Path | None = None
    service_entry_dir: Path | None = None
    plugin_ca_dir: Path | None = None
    workload_ttl: dt.timedelta = dt.timedelta(hours=24)
    max_ttl: dt.timedelta = dt.timedelta(hours=24)
    root_namespace: str = DEFAULT_ROOT_NAMESPACE
    rate_limit: float = DEFAULT_RATE
    rate_burst: float = DEFAULT_BURST
    metrics_listen: tuple[str, int] | None = None
    # The sidecar injection webhook (HTTPS, /inject): off unless given; its injector settings.
    webhook_listen: tuple[str, int] | None = None
    injector_config: Path | None = None
    workers: int = 1
    mtls_listen: tuple[str, int] | None = None
    # How long a new root is trusted before the CA signs with it (plug-in files' rotation).
    root_rotation_grace: dt.timedelta = dt.timedelta(hours=1)
    handshake_timeout: dt.timedelta = dt.timedelta(seconds=10)
    idle_timeout: dt.timedelta = dt.timedelta(minutes=5)
    max_connections: int = 4096
    max_connections_per_source: int = 64
    # On Kubernetes: mesh state from the API server, agents by their ServiceAccount tokens.
    kubernetes: bool = False
    kubeconfig: Path | None = None  # None on Kubernetes: the pod's in-cluster config
    agent_namespace: str = rbac.CONTROL_PLANE_NAMESPACE
    agent_service_account: str = rbac.NODE_AGENT_SERVICE_ACCOUNT
    token_audience: str = rbac.TOKEN_AUDIENCE
    # SPIFFE federation: our bundle endpoint, and the foreign trust domains we fetch bundles of.
    bundle_endpoint_listen: tuple[str, int] | None = None
    bundle_endpoint_refresh_hint: dt.timedelta = dt.timedelta(minutes=5)
    federates_with: tuple[FederationRelationship, ...] = ()

    @property
    def listen(self) -> str:
        return join_host_port(self.host, self.port)


def parse_listen(value: str) -> tuple[str, int]:
    host, port = parse_host_port(value, "listen")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError as exc:
            raise ConfigError(f"listen: {host!r} is not an IP address") from exc
    return host, port


def read_config_file(path: Path) -> LineDict:
    """The file's settings by key (`line_of` says where each is)."""
    docs = load_file(path)
    if not docs:
        empty = LineDict()
        empty.key_lines = {}
        return empty
    if len(docs) != 1 or not isinstance(docs[0], LineDict):
        raise ConfigError(f"{path}:1: config must be one YAML mapping")
    top = docs[0]
    out = LineDict()
    out.key_lines = {}
    for key, value in top.items():
        norm = key.replace("_", "-")
        if norm not in DEFAULTS:
            raise ConfigError(
                f"{path}:{top.line_of(key)}: unknown key {key!r} (known: {', '.join(DEFAULTS)})"
            )
        out[norm] = value
        out.key_lines[norm] = top.line_of(key)
    return out


def load_config(path: Path | None, flags: Mapping[str, Any]) -> CaConfig:
    """The one config reader, at start and when the file changes: defaults < the file < flags.
    A problem of a setting from the file is one ConfigError `FILE:LINE: key...: reason`."""
    from_file = read_config_file(path) if path is not None else None
    given = {k: v for k, v in flags.items() if v is not None}
    try:
        return build_config({**(from_file or {}), **given})
    except ConfigError as exc:
        line = None if from_file is None else _line_of_problem(from_file, str(exc), given)
        if line is None:  # not about the file's settings (a flag's, or of none in particular)
            raise
        raise ConfigError(f"{path}:{line}: {exc}") from exc


def locate_problem(path: Path, exc: ConfigError, flags: Mapping[str, Any]) -> ConfigError:
    """`exc` as `FILE:LINE: ...` when it is about a setting of the file (read again: it is for
    problems found after `load_config`, such as an unusable initial bundle)."""
    if str(exc).startswith(f"{path}:"):
        return exc
    try:
        line = _line_of_problem(read_config_file(path), str(exc), flags)
    except ConfigError:
        line = None
    return ConfigError(f"{path}:{line}: {exc}" if line is not None else f"{path}: {exc}")


def _line_of_problem(top: LineDict, message: str, flags: Mapping[str, Any]) -> int | None:
    """The line of the setting a build_config message starts with (`key: ...` or
    `key.sub.key: ...`; trust domains have dots, so keys are matched whole, not split)."""
    mapping: Any = top
    rest, line = message, None
    while isinstance(mapping, LineDict):
        match = next(
            (k for k in sorted(map(str, mapping), key=len, reverse=True)
             if rest.startswith(k) and rest[len(k) : len(k) + 1] in (".", ":", " ")),
            None,
        )  # fmt: skip
        if match is None or (mapping is top and match in flags):
            break
        line, mapping, rest = mapping.line_of(match), mapping[match], rest[len(match) + 1 :]
    return line


def _existing(value: Any, key: str, *, directory: bool) -> Path | None:
    if value in (None, ""):
        return None
    path = Path(str(value))
    if directory and not path.is_dir():
        raise ConfigError(f"{key}: {path} is not a directory")
    if not directory and not path.is_file():
        raise ConfigError(f"{key}: {path} is not a file")
    return path


def _number(value: Any, key: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}: {value!r} is not a number") from exc
    if number <= 0:
        raise ConfigError(f"{key}: must be greater than zero")
    return number


def _count(value: Any, key: str) -> int:
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
        raise ConfigError(f"{key}: {value!r} is not a whole number of at least 1")
    return int(text)


def build_config(settings: Mapping[str, Any]) -> CaConfig:
    """Validate merged settings (defaults < config file < flags) into a CaConfig."""
    merged = {**DEFAULTS, **{k: v for k, v in settings.items() if v is not None}}
    host, port = parse_listen(str(merged["listen"]))
    try:
        trust_domain = validate_trust_domain(str(merged["trust-domain"]))
        root_namespace = validate_name("root-namespace", str(merged["root-namespace"]))
    except SpiffeIdError as exc:
        raise ConfigError(f"trust-domain/root-namespace: {exc}") from exc
    workload_ttl = parse_duration(str(merged["workload-ttl"]), "workload-ttl")
    max_ttl = parse_duration(str(merged["max-ttl"]), "max-ttl")
    if workload_ttl > max_ttl:
        raise ConfigError(
            f"workload-ttl {merged['workload-ttl']} is longer than max-ttl {merged['max-ttl']}"
        )
    rate = _number(merged["rate-limit"], "rate-limit")
    burst = _number(merged["rate-burst"], "rate-burst")
    if burst < 1:
        raise ConfigError("rate-burst: must be at least 1")
    return CaConfig(
        host=host,
        port=port,
        state_dir=Path(str(merged["state-dir"])),
        trust_domain=trust_domain,
        registry=_existing(merged["registry"], "registry", directory=False),
        policy_dir=_existing(merged["policy-dir"], "policy-dir", directory=True),
        service_entry_dir=_existing(
            merged["service-entry-dir"], "service-entry-dir", directory=True
        ),
        plugin_ca_dir=_existing(merged["plugin-ca-dir"], "plugin-ca-dir", directory=True),
        workload_ttl=workload_ttl,
        max_ttl=max_ttl,
        root_namespace=root_namespace,
        rate_limit=rate,
        rate_burst=burst,
        metrics_listen=_optional_listen(merged["metrics-listen"], "metrics-"),
        workers=_workers(merged["workers"]),
        mtls_listen=_optional_listen(merged["mtls-listen"], "mtls-"),
        root_rotation_grace=parse_duration(
            str(merged["root-rotation-grace"]), "root-rotation-grace"
        ),
        webhook_listen=_optional_listen(merged["webhook-listen"], "webhook-"),
        injector_config=_existing(merged["injector-config"], "injector-config", directory=False),
        handshake_timeout=parse_duration(str(merged["handshake-timeout"]), "handshake-timeout"),
        idle_timeout=parse_duration(str(merged["idle-timeout"]), "idle-timeout"),
        max_connections=_count(merged["max-connections"], "max-connections"),
        max_connections_per_source=_count(
            merged["max-connections-per-source"], "max-connections-per-source"
        ),
        **_kubernetes(merged),
        bundle_endpoint_listen=_optional_listen(
            merged["bundle-endpoint-listen"], "bundle-endpoint-"
        ),
        bundle_endpoint_refresh_hint=parse_duration(
            str(merged["bundle-endpoint-refresh-hint"]), "bundle-endpoint-refresh-hint"
        ),
        federates_with=parse_federates_with(merged["federates-with"], trust_domain),
    )


def default_workers() -> int:
    """The cores this process may run on (its CPU affinity, not the machine's count)."""
    return max(1, len(os.sched_getaffinity(0)))


def _workers(value: Any) -> int:
    if value in (None, ""):
        return default_workers()
    if isinstance(value, bool) or not str(value).isdigit() or not 1 <= int(value) <= 256:
        raise ConfigError(f"workers: {value!r} is not a number of processes from 1 to 256")
    return int(value)


def _kubernetes(merged: Mapping[str, Any]) -> dict[str, Any]:
    on = merged["kubernetes"]
    if not isinstance(on, bool):
        raise ConfigError(f"kubernetes: {on!r} is not true or false")
    kubeconfig = _existing(merged["kubeconfig"], "kubeconfig", directory=False)
    if kubeconfig is not None and not on:
        raise ConfigError("kubeconfig: only with kubernetes (--kubernetes)")
    if on and (merged["registry"] or merged["policy-dir"]):
        raise ConfigError("kubernetes: the mesh state comes from the API; drop registry/policy-dir")
    if on and merged["service-entry-dir"]:
        raise ConfigError(
            "service-entry-dir: not with kubernetes (ServiceEntry objects come from the API: "
            "kubectl apply them)"
        )
    ns, sep, name = str(merged["agent-service-account"]).partition("/")
    try:
        if not sep:
            raise SpiffeIdError("must be NAMESPACE/NAME")
        validate_name("namespace", ns)
        validate_name("service account", name)
    except SpiffeIdError as exc:
        raise ConfigError(f"agent-service-account: {exc}") from exc
    audience = str(merged["token-audience"])
    if not audience:
        raise ConfigError("token-audience: must not be empty")
    return {
        "kubernetes": on,
        "kubeconfig": kubeconfig,
        "agent_namespace": ns,
        "agent_service_account": name,
        "token_audience": audience,
    }


def _optional_listen(value: Any, prefix: str) -> tuple[str, int] | None:
    if value in (None, ""):
        return None
    try:
        return parse_listen(str(value))
    except ConfigError as exc:
        raise ConfigError(f"{prefix}{exc}") from exc
