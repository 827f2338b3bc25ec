"""The install's settings (`meshward manifest generate --set key=value`), as `istioctl manifest
generate --set` takes them. Pure and validated; unknown keys are refused by name.

    image=REPO:TAG                 every meshward container (control plane, agents, sidecars)
    trustDomain=cluster.local      the mesh's SPIFFE trust domain
    cacerts=DIR                    Istio's plug-in CA files (ca-cert.pem, ca-key.pem,
                                   root-cert.pem, cert-chain.pem): the `cacerts` Secret, and the
                                   webhook's caBundle (the root)
    socketDir=/var/run/meshward/agent   the node agents' socket directory on each node
    tokenAudience=istio-ca         the audience of the agents' projected token
    caAddress=HOST:PORT            where the node agents dial the CA (default: the control
                                   plane's Service, meshward-control-plane.istio-system.svc:15012)
    injectionURL=https://H:P/inject  an external control plane's webhook (Istio's
                                   istiodRemote.injectionURL): no control plane Deployment,
                                   Service or CA Secret in the cluster
    injector.<setting>=VALUE       the sidecar injector's settings (failure_policy=Ignore, ...)
    bundleEndpoint.port=8443, bundleEndpoint.serviceType=T, bundleEndpoint.refreshHint=D,
    federatesWith=FILE             federation (`meshward.install.federation`)
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from ca.kube.rbac import TOKEN_AUDIENCE
from injector.config import (
    CONTROL_PLANE_NAMESPACE,
    DEFAULT_IMAGE,
    DEFAULT_SOCKET_HOST_DIR,
    WEBHOOK_SERVICE,
    InjectorConfig,
)
from meshward.install.federation import KEYS as FEDERATION_KEYS
from meshward.install.federation import FederationValues, parse_federation
from meshward_common import ports
from meshward_common.addresses import parse_host_port
from meshward_common.errors import ConfigError
from meshward_common.spiffe_id import DEFAULT_TRUST_DOMAIN, validate_trust_domain

CACERTS_FILES = ("ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem")
_KEYS = (
    "image",
    "trustDomain",
    "cacerts",
    "socketDir",
    "tokenAudience",
    "caAddress",
    "injectionURL",
    *FEDERATION_KEYS,
)
DEFAULT_CA_ADDRESS = f"{WEBHOOK_SERVICE}.{CONTROL_PLANE_NAMESPACE}.svc:{ports.CONTROL_PLANE}"
_AUDIENCE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,252}$")


@dataclass(frozen=True)
class InstallValues:
    image: str = DEFAULT_IMAGE
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    cacerts: Path | None = None
    socket_dir: str = DEFAULT_SOCKET_HOST_DIR
    token_audience: str = TOKEN_AUDIENCE
    injector: InjectorConfig = field(default_factory=InjectorConfig)
    ca_address: str = DEFAULT_CA_ADDRESS
    injection_url: str = ""  # set: the control plane runs outside the cluster
    federation: FederationValues = field(default_factory=FederationValues)


def parse_values(pairs: tuple[str, ...] | list[str]) -> InstallValues:
    plain: dict[str, str] = {}
    injector: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {pair!r}: expected key=value")
        if key.startswith("injector."):
            injector[key.removeprefix("injector.")] = value
        elif key in _KEYS:
            plain[key] = value
        else:
            raise ConfigError(
                f"--set {key}: unknown setting (known: {', '.join(_KEYS)}, injector.<setting>)"
            )
    image = plain.get("image", DEFAULT_IMAGE)
    socket_dir = plain.get("socketDir", DEFAULT_SOCKET_HOST_DIR)
    injector_config = InjectorConfig.from_mapping(
        {"image": image, "socket_host_dir": socket_dir, **injector}, "--set injector"
    )
    try:
        trust_domain = validate_trust_domain(plain.get("trustDomain", DEFAULT_TRUST_DOMAIN))
    except Exception as exc:
        raise ConfigError(f"--set trustDomain: {exc}") from exc
    audience = plain.get("tokenAudience", TOKEN_AUDIENCE)
    if not _AUDIENCE_RE.match(audience):
        raise ConfigError(f"--set tokenAudience: {audience!r} is not a token audience")
    cacerts = None
    if plain.get("cacerts"):
        cacerts = Path(plain["cacerts"])
        missing = [name for name in CACERTS_FILES if not (cacerts / name).is_file()]
        if missing:
            raise ConfigError(f"--set cacerts: {cacerts} lacks {', '.join(missing)}")
    ca_address = plain.get("caAddress", DEFAULT_CA_ADDRESS)
    parse_host_port(ca_address, "--set caAddress")
    injection_url = plain.get("injectionURL", "")
    parsed = urllib.parse.urlsplit(injection_url)
    if injection_url and (parsed.scheme != "https" or not parsed.hostname):
        raise ConfigError(f"--set injectionURL: {injection_url!r} is not an https:// URL")
    federation = parse_federation(plain, trust_domain)
    if injection_url and (federation.bundle_port or federation.federates_with):
        raise ConfigError(
            "--set injectionURL: the control plane runs outside the cluster; configure its "
            "bundle endpoint and federation there, not with bundleEndpoint.*/federatesWith"
        )
    return InstallValues(
        image=injector_config.image,
        trust_domain=trust_domain,
        cacerts=cacerts,
        socket_dir=injector_config.socket_host_dir,
        token_audience=audience,
        injector=injector_config,
        ca_address=ca_address,
        injection_url=injection_url,
        federation=federation,
    )
