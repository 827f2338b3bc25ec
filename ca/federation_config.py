"""The federation relationships a control plane is configured with (`federates-with` in its
config file), as SPIRE's server configures them:

    federates-with:
      b.example:                                    # the foreign trust domain
        bundle-endpoint-url: https://10.0.0.2:8443/  # its SPIFFE bundle endpoint
        bundle-endpoint-profile: https_spiffe       # the only profile supported (the default)
        endpoint-spiffe-id: spiffe://b.example/meshward/control-plane
        trust-bundle: /etc/meshward/federation/b.example.json  # initial bundle (JSON or PEM)

The endpoint's SPIFFE ID says whom the endpoint must present (https_spiffe authenticates the
endpoint by its X.509-SVID, not by a DNS name). A self-serving endpoint (its ID in the foreign
trust domain) needs the foreign domain's bundle once, obtained out of band, to authenticate the
first fetch; every later fetch is authenticated with the last bundle fetched. An endpoint whose ID
is in our own or in another federated trust domain is authenticated with that domain's bundle.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshward_common.errors import ConfigError, SpiffeIdError
from meshward_common.spiffe_id import SpiffeId, validate_trust_domain

HTTPS_SPIFFE = "https_spiffe"
HTTPS_WEB = "https_web"
_KEYS = ("bundle-endpoint-url", "bundle-endpoint-profile", "endpoint-spiffe-id", "trust-bundle")


@dataclass(frozen=True)
class FederationRelationship:
    """One foreign trust domain whose bundle we fetch (the relationship is one-way)."""

    trust_domain: str
    url: str
    endpoint_id: SpiffeId
    trust_bundle: Path | None = None  # the initial bundle (self-serving endpoints)

    @property
    def self_serving(self) -> bool:
        return self.endpoint_id.trust_domain == self.trust_domain

    @property
    def host(self) -> str:
        return str(urllib.parse.urlsplit(self.url).hostname)

    @property
    def port(self) -> int:
        return urllib.parse.urlsplit(self.url).port or 443


def check_endpoint_url(url: str) -> str:
    """An https_spiffe endpoint URL: https, a host, no userinfo (Federation spec 5.2.2.1)."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{url!r} is not a URL: {exc}") from exc
    if parts.scheme != "https":
        raise ConfigError(f"{url!r}: a bundle endpoint URL must be https")
    if not parts.hostname:
        raise ConfigError(f"{url!r}: the URL has no host")
    if "@" in parts.netloc:
        raise ConfigError(f"{url!r}: a bundle endpoint URL must not carry userinfo")
    if port == 0:
        raise ConfigError(f"{url!r}: port 0")
    return url


def parse_federates_with(value: Any, own_trust_domain: str) -> tuple[FederationRelationship, ...]:
    """Validate the `federates-with` mapping; one ConfigError naming the key at fault."""
    if value in (None, ""):
        return ()
    if not isinstance(value, Mapping):
        raise ConfigError("federates-with: must map trust domains to their bundle endpoints")
    out = []
    for td, entry in value.items():
        where = f"federates-with.{td}"
        try:
            validate_trust_domain(str(td))
        except SpiffeIdError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
        if td == own_trust_domain:
            raise ConfigError(f"{where}: that is this control plane's own trust domain")
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where}: must be a mapping with {', '.join(_KEYS)}")
        out.append(_relationship(str(td), entry, where))
    known = {own_trust_domain, *(r.trust_domain for r in out)}
    for rel in out:
        if rel.endpoint_id.trust_domain not in known:
            raise ConfigError(
                f"federates-with.{rel.trust_domain}.endpoint-spiffe-id: "
                f"{rel.endpoint_id} is in trust domain {rel.endpoint_id.trust_domain}, which is "
                "neither ours nor one we federate with: nothing could authenticate the endpoint"
            )
    return tuple(out)


def _relationship(td: str, entry: Mapping[str, Any], where: str) -> FederationRelationship:
    for key in entry:
        if key not in _KEYS:
            raise ConfigError(f"{where}.{key}: unknown key (known: {', '.join(_KEYS)})")
    profile = entry.get("bundle-endpoint-profile") or HTTPS_SPIFFE
    if profile == HTTPS_WEB:
        raise ConfigError(
            f"{where}.bundle-endpoint-profile: https_web is not supported (Web PKI); use "
            "https_spiffe with the endpoint's SPIFFE ID"
        )
    if profile != HTTPS_SPIFFE:
        raise ConfigError(f"{where}.bundle-endpoint-profile: {profile!r} is not https_spiffe")
    url = entry.get("bundle-endpoint-url")
    if not isinstance(url, str) or not url:
        raise ConfigError(f"{where}.bundle-endpoint-url: required")
    try:
        check_endpoint_url(url)
    except ConfigError as exc:
        raise ConfigError(f"{where}.bundle-endpoint-url: {exc}") from exc
    raw_id = entry.get("endpoint-spiffe-id")
    if not isinstance(raw_id, str) or not raw_id:
        raise ConfigError(f"{where}.endpoint-spiffe-id: required for https_spiffe")
    try:
        endpoint_id = SpiffeId.parse(raw_id)
    except SpiffeIdError as exc:
        raise ConfigError(f"{where}.endpoint-spiffe-id: {exc}") from exc
    bundle = entry.get("trust-bundle")
    path = Path(str(bundle)) if bundle not in (None, "") else None
    if path is not None and not path.is_file():
        raise ConfigError(f"{where}.trust-bundle: {path} is not a file")
    if path is None and endpoint_id.trust_domain == td:
        raise ConfigError(
            f"{where}.trust-bundle: required: the endpoint is self-serving ({endpoint_id} is in "
            f"{td}), so its first fetch is authenticated with an initial bundle of {td} "
            f"(`meshward ca bundle show` on {td}'s control plane writes it)"
        )
    return FederationRelationship(td, url, endpoint_id, path)
