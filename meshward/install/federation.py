"""The install's federation settings: this trust domain's SPIFFE bundle endpoint, exposed for
peers, and the foreign trust domains it federates with (`--set` keys of `manifest generate`).

    bundleEndpoint.port=8443        serve the bundle endpoint (`ca serve --bundle-endpoint-listen
                                    0.0.0.0:8443`): a container port and the Service
                                    meshward-bundle-endpoint (SPIRE's federation port). Off by
                                    default: only a mesh that others federate with needs it, and
                                    it is meant to be reachable from outside the cluster.
    bundleEndpoint.serviceType=T    that Service's type (ClusterIP, NodePort or LoadBalancer:
                                    a peer in another cluster reaches it through one of the last two)
    bundleEndpoint.refreshHint=5m   the spiffe_refresh_hint it serves
    federatesWith=FILE              a YAML file holding `federates-with:` in the CA config file's
                                    format; its `trust-bundle` files (relative to FILE) are read
                                    now. Shipped as the ConfigMap meshward-ca-config (always
                                    there, no relationship without this key), mounted as the
                                    CA's `--config` file, which the CA follows: an edit of the
                                    ConfigMap is applied live once the kubelet swaps the mount.

Pure apart from reading FILE and its bundles, validated at generate time with the CA's own rules
(`ca.federation_config`, `meshward_common.spiffe_bundle`), so a bad file fails here in one line
rather than in the cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ca.federation_config import parse_federates_with
from meshward_common.durations import parse_duration
from meshward_common.errors import ConfigError, MeshwardError
from meshward_common.spiffe_bundle import load_bundle_text
from meshward_common.yaml_lines import LineDict, load_file

CA_CONFIGMAP = "meshward-ca-config"
CA_CONFIG_MOUNT = "/etc/meshward/ca-config"
CA_CONFIG_FILE = "config.yaml"
BUNDLE_ENDPOINT_SERVICE = "meshward-bundle-endpoint"
BUNDLE_PORT_NAME = "https-bundle"
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")
KEYS = (
    "bundleEndpoint.port",
    "bundleEndpoint.serviceType",
    "bundleEndpoint.refreshHint",
    "federatesWith",
)


@dataclass(frozen=True)
class FederationValues:
    bundle_port: int = 0  # 0: no bundle endpoint
    service_type: str = "ClusterIP"
    refresh_hint: str = ""  # "": the CA's default
    # trust domain -> (its relationship as the CA config file says it, the initial bundle's bytes)
    federates_with: tuple[tuple[str, dict[str, Any], str | None], ...] = ()


def parse_federation(plain: dict[str, str], trust_domain: str) -> FederationValues:
    port = 0
    if "bundleEndpoint.port" in plain:
        text = plain["bundleEndpoint.port"]
        if not text.isdigit() or not 0 < int(text) < 65536:
            raise ConfigError(f"--set bundleEndpoint.port: {text!r} is not a port 1..65535")
        port = int(text)
    service_type = plain.get("bundleEndpoint.serviceType", "ClusterIP")
    if service_type not in SERVICE_TYPES:
        raise ConfigError(
            f"--set bundleEndpoint.serviceType: {service_type!r} is not one of "
            f"{', '.join(SERVICE_TYPES)}"
        )
    hint = plain.get("bundleEndpoint.refreshHint", "")
    if hint:
        parse_duration(hint, "--set bundleEndpoint.refreshHint")
    if not port and ("bundleEndpoint.serviceType" in plain or hint):
        raise ConfigError("--set bundleEndpoint.*: give bundleEndpoint.port to serve it")
    peers: tuple[tuple[str, dict[str, Any], str | None], ...] = ()
    if plain.get("federatesWith"):
        peers = _federates_with(Path(plain["federatesWith"]), trust_domain)
    return FederationValues(port, service_type, hint, peers)


def _federates_with(
    path: Path, trust_domain: str
) -> tuple[tuple[str, dict[str, Any], str | None], ...]:
    where = f"--set federatesWith: {path}"
    try:
        docs = load_file(path)
    except MeshwardError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    if len(docs) != 1 or not isinstance(docs[0], LineDict) or set(docs[0]) != {"federates-with"}:
        raise ConfigError(f"{where}:1: expected one mapping with the key federates-with only")
    value = docs[0]["federates-with"]
    if isinstance(value, dict):  # the bundles named relative to the file, as a reader expects
        for entry in value.values():
            if isinstance(entry, dict) and entry.get("trust-bundle"):
                entry["trust-bundle"] = str(path.parent / str(entry["trust-bundle"]))
    try:
        relationships = parse_federates_with(value, trust_domain)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    out = []
    for rel in relationships:
        data = None
        if rel.trust_bundle is not None:
            try:
                raw = rel.trust_bundle.read_bytes()
                load_bundle_text(raw, rel.trust_domain, str(rel.trust_bundle))
                data = raw.decode()
            except (MeshwardError, OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{where}: federates-with.{rel.trust_domain}: {exc}") from exc
        entry = {k: v for k, v in dict(value[rel.trust_domain]).items() if k != "trust-bundle"}
        out.append((rel.trust_domain, entry, data))
    return tuple(out)


def bundle_file(trust_domain: str) -> str:
    return f"{trust_domain}.bundle"  # a ConfigMap key: trust domain names are valid in one


def ca_config_data(values: FederationValues) -> dict[str, str]:
    """The ConfigMap's data: the CA config file, and each initial bundle beside it."""
    peers: dict[str, Any] = {}
    data: dict[str, str] = {}
    for td, entry, bundle in values.federates_with:
        peers[td] = dict(entry)
        if bundle is not None:
            data[bundle_file(td)] = bundle
            peers[td]["trust-bundle"] = f"{CA_CONFIG_MOUNT}/{bundle_file(td)}"
    data[CA_CONFIG_FILE] = yaml.safe_dump({"federates-with": peers}, sort_keys=True)
    return data
