"""The agent's options, from flags or a YAML file, validated once at start.

Flags win over the file. Every problem is one `ConfigError` line naming the option and the value.
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from meshward_common import ports
from meshward_common.addresses import parse_host_port
from meshward_common.durations import parse_duration
from meshward_common.errors import ConfigError, SpiffeIdError
from meshward_common.spiffe_id import validate_name
from node_agent.join_token import read_join_token

CONFIG_KEYS = {
    "node", "ca_address", "state_dir", "socket", "trust_bundle", "join_token_file",
    "kubernetes", "token_file",
    "workload_ttl", "log_level", "metrics_listen",
}  # fmt: skip


# Where Istio's injector projects the istio-ca audience token into its sidecars and agents.
DEFAULT_TOKEN_FILE = "/var/run/secrets/tokens/istio-token"  # noqa: S105 (a path)


def default_socket(node: str) -> Path:
    return Path(f"/run/meshward/{node}/agent.sock")


@dataclass(frozen=True)
class AgentConfig:
    node: str
    ca_address: str
    state_dir: Path
    socket_path: Path
    trust_bundle: Path | None
    join_token: str | None
    workload_ttl: dt.timedelta
    log_level: str = "INFO"
    metrics_listen: tuple[str, int] | None = None  # Prometheus endpoint; off unless asked
    # On Kubernetes: the pod's projected ServiceAccount token, re-read at each bootstrap (the
    # kubelet rotates it); it authenticates the agent when it has no valid node SVID.
    token_file: Path | None = None


def load_config_file(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: must be a mapping of option: value")
    out: dict[str, Any] = {}
    for key, value in data.items():
        norm = str(key).replace("-", "_")
        if norm == "socket_path":
            norm = "socket"
        if norm == "join_token":
            raise ConfigError(
                f"config file {path}: join-token: not a config option (a secret belongs in a "
                "file of its own); use join-token-file: FILE (mode 0600), or - for stdin"
            )
        if norm not in CONFIG_KEYS:
            raise ConfigError(
                f"config file {path}: unknown option {key!r} (known: {', '.join(sorted(CONFIG_KEYS))})"
            )
        out[norm] = value
    return out


def build_config(
    flags: Mapping[str, Any], file_values: Mapping[str, Any], stdin: TextIO | None = None
) -> AgentConfig:
    """Merge flags over file values, apply defaults, validate everything."""
    merged: dict[str, Any] = dict(file_values)
    merged.update({k: v for k, v in flags.items() if v is not None})
    node = merged.get("node")
    if not node:
        raise ConfigError("--node is required (the node name the registry uses)")
    try:
        validate_name("node name", str(node))
    except SpiffeIdError as exc:
        raise ConfigError(f"--node: {exc}") from exc
    address = str(merged.get("ca_address") or f"127.0.0.1:{ports.CONTROL_PLANE}")
    parse_host_port(address, "--ca-address", port_zero=False)
    state_dir = merged.get("state_dir")
    if not state_dir:
        raise ConfigError("--state-dir is required (where the node key and SVID live)")
    socket_path = Path(merged.get("socket") or default_socket(str(node)))
    if len(str(socket_path).encode()) > 107:
        raise ConfigError(f"--socket: {socket_path} is longer than a Unix socket path may be")
    bundle = merged.get("trust_bundle")
    token_file = merged.get("join_token_file")
    token = read_join_token(str(token_file), stdin or sys.stdin) if token_file else None
    token_path = merged.get("token_file")
    if merged.get("kubernetes") and not token_path:
        token_path = DEFAULT_TOKEN_FILE
    if token_path and token:
        raise ConfigError("give a join token or a ServiceAccount token file, not both")
    ttl = merged.get("workload_ttl") or "24h"
    metrics = merged.get("metrics_listen")
    metrics_listen = None
    if metrics:
        metrics_listen = parse_host_port(str(metrics), "--metrics-listen")
    return AgentConfig(
        node=str(node),
        ca_address=address,
        state_dir=Path(str(state_dir)),
        socket_path=socket_path,
        trust_bundle=Path(str(bundle)) if bundle else None,
        join_token=token,
        workload_ttl=parse_duration(str(ttl), "--workload-ttl"),
        log_level=str(merged.get("log_level") or "INFO").upper(),
        metrics_listen=metrics_listen,
        token_file=Path(str(token_path)) if token_path else None,
    )
