"""What the injector puts into a Pod, as one frozen value (Istio's injection values and mesh config).

The same values are written by `meshward manifest generate` into the injector's ConfigMap and
read back by the control plane, so the webhook and `kube-inject` inject the same thing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from meshward_common.errors import ConfigError

FailurePolicy = Literal["Fail", "Ignore"]
PullPolicy = Literal["Always", "IfNotPresent", "Never"]
_IMAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}$")
_DNS_LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")

DEFAULT_IMAGE = "meshward/meshward:0.1.0"
# Where the node agents' Workload API sockets live on each node (the DaemonSet's hostPath), and
# where the sidecar sees that directory (the path Istio uses for SPIRE's socket).
DEFAULT_SOCKET_HOST_DIR = "/var/run/meshward/agent"
SOCKET_MOUNT_PATH = "/var/run/secrets/workload-spiffe-uds"
SOCKET_NAME = "socket"
# The control plane's Service (gRPC 15012, the webhook on 443 -> 15017) and its namespace.
WEBHOOK_SERVICE = "meshward-control-plane"
CONTROL_PLANE_NAMESPACE = "istio-system"
WEBHOOK_PORT = 15017


@dataclass(frozen=True)
class InjectorConfig:
    image: str = DEFAULT_IMAGE
    image_pull_policy: PullPolicy = "IfNotPresent"
    revision: str = "default"
    socket_host_dir: str = DEFAULT_SOCKET_HOST_DIR
    # Istio's sidecarInjectorWebhook.rewriteAppHTTPProbe (default on).
    rewrite_app_probes: bool = True
    # What the webhook answers for a Pod it cannot patch: refuse it (Fail) or admit it unchanged
    # (Ignore). The MutatingWebhookConfiguration carries the same value, so an unreachable
    # webhook is treated alike.
    failure_policy: FailurePolicy = "Fail"
    # OTLP/HTTP collector for the sidecars' spans ("" = $OTEL_EXPORTER_OTLP_ENDPOINT or none).
    otlp_endpoint: str = ""
    trace_sampling: float = 1.0

    def __post_init__(self) -> None:
        if not _IMAGE_RE.match(self.image):
            raise ConfigError(f"injector: image {self.image!r} is not an image reference")
        if self.image_pull_policy not in ("Always", "IfNotPresent", "Never"):
            raise ConfigError(
                f"injector: image_pull_policy {self.image_pull_policy!r} is not Always, "
                "IfNotPresent or Never"
            )
        if not _DNS_LABEL_RE.match(self.revision):
            raise ConfigError(f"injector: revision {self.revision!r} is not a DNS label")
        if not self.socket_host_dir.startswith("/"):
            raise ConfigError(
                f"injector: socket_host_dir {self.socket_host_dir!r} is not an absolute path"
            )
        if self.failure_policy not in ("Fail", "Ignore"):
            raise ConfigError(
                f"injector: failure_policy {self.failure_policy!r} is not Fail or Ignore"
            )
        if not 0.0 <= self.trace_sampling <= 100.0:
            raise ConfigError(f"injector: trace_sampling {self.trace_sampling} is not 0..100")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str) -> InjectorConfig:
        known = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"{source}: unknown injector setting(s) {', '.join(unknown)}")
        values: dict[str, Any] = {}
        for key, value in data.items():
            default = getattr(cls(), key)
            values[key] = _coerce(value, type(default), f"{source}: {key}")
        return cls(**values)


def _coerce(value: Any, kind: type, where: str) -> Any:
    """Settings come from YAML or `--set k=v` strings: accept both spellings, refuse the rest."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"{where}: {value!r} is not true or false")
    if kind is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: {value!r} is not a number")
        try:
            return float(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {value!r} is not a number") from exc
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {value!r} is not a string")
    return value


def load_injector_config(config_file: Path | None, sets: dict[str, str]) -> InjectorConfig:
    data: dict[str, object] = {}
    if config_file is not None:
        try:
            loaded = yaml.safe_load(config_file.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{config_file}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{config_file}: invalid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{config_file}: the injector config must be a mapping")
        data.update(loaded or {})
    data.update(sets)
    return InjectorConfig.from_mapping(data, str(config_file or "--set"))
