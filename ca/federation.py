"""Federated trust domains' bundles, fetched and kept by the supervisor (SPIFFE Federation).

Per relationship (`ca.federation_config`): the bundle in force starts as the operator's initial
bundle (or, after a restart, the last one fetched, kept in the state database; an initial file the
operator changed wins, as the spec lets operators update a foreign bundle locally). Each refresh
authenticates the endpoint with the current bundle of the endpoint ID's trust domain and takes
what it serves if it is a valid bundle for that trust domain and not older (by `spiffe_sequence`)
than the one held. A refresh that fails keeps the last good bundle, in one log line; the next
attempts back off from FIRST_RETRY_SECONDS, doubling, up to the usual interval (the spec asks clients
not to hammer a failing endpoint, but a peer that was merely not up yet should not cost a whole
interval).

The interval is a quarter of the bundle's refresh hint (SPIRE's four attempts per hint, so a missed
poll or two costs nothing), five minutes' worth when the bundle sets none, and never under
MIN_REFRESH_SECONDS. Every change reaches the mesh through the publisher: MeshState.trust_bundles
carries each federated domain's roots beside our own, distinct per trust domain (never merged).

The relationships change at runtime (`apply`: the CA's config file edited, as SPIRE's federation
API adds and removes them): a new one starts from its initial bundle, a removed one leaves the mesh
and the state database, a changed one (URL, endpoint ID, initial bundle) restarts its fetching from
the bundle in force (the last one fetched, unless the operator's initial file changed).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography import x509

from ca.bundle_client import FetchError, fetch_bundle
from ca.federation_config import FederationRelationship
from ca.store import CaStore
from meshward_common.clock import Clock
from meshward_common.errors import ConfigError, SvidError
from meshward_common.spiffe_bundle import (
    SpiffeBundle,
    encode_bundle,
    load_bundle_text,
    parse_bundle,
)

log = logging.getLogger(__name__)

FETCHED = "federated_bundle:"  # + trust domain: the bundle in force (encoded), version = digest
SEEDED = "federated_seed:"  # + trust domain: digest of the initial file it was seeded from
DEFAULT_REFRESH_HINT = 300
ATTEMPTS_PER_HINT = 4
MIN_REFRESH_SECONDS = 1.0
FIRST_RETRY_SECONDS = 5.0


def refresh_interval(bundle: SpiffeBundle) -> float:
    hint = bundle.refresh_hint or DEFAULT_REFRESH_HINT
    return max(MIN_REFRESH_SECONDS, hint / ATTEMPTS_PER_HINT)


def retry_interval(bundle: SpiffeBundle, failures: int) -> float:
    """The wait before the next attempt after `failures` consecutive failed ones (0: none failed)."""
    usual = refresh_interval(bundle)
    if failures == 0:
        return usual
    return min(usual, FIRST_RETRY_SECONDS * 2.0 ** min(failures - 1, 32))


def take_fetched(held: SpiffeBundle, fetched: SpiffeBundle) -> SpiffeBundle | None:
    """The bundle to hold after a fetch: the fetched one if it is news, None if nothing changed.
    Raises SvidError for other keys under an older sequence (a replayed or rolled-back answer)."""
    unchanged = (fetched.sequence, fetched.refresh_hint) == (held.sequence, held.refresh_hint)
    if fetched.same_keys(held) and unchanged:
        return None
    if (
        fetched.sequence is not None
        and held.sequence is not None
        and fetched.sequence < held.sequence
    ):
        if fetched.same_keys(held):
            return None
        raise SvidError(
            [f"sequence {fetched.sequence} is older than the {held.sequence} already held"]
        )
    return fetched


@dataclass
class FederatedDomain:
    relationship: FederationRelationship
    bundle: SpiffeBundle
    refreshed: dt.datetime | None = None
    error: str = ""

    def status(self) -> dict[str, object]:
        return {
            "bundle_endpoint_url": self.relationship.url,
            "endpoint_spiffe_id": str(self.relationship.endpoint_id),
            "sequence": self.bundle.sequence,
            "refresh_hint": self.bundle.refresh_hint,
            "roots": len(self.bundle.x509_authorities),
            "refreshed": self.refreshed.isoformat() if self.refreshed else None,
            "error": self.error,
        }


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


class Federation:
    """The federated bundles of one control plane. `on_change` runs after each new bundle or
    refresh outcome (the publisher republishes and rewrites its status file)."""

    def __init__(
        self,
        relationships: Sequence[FederationRelationship],
        store: CaStore,
        clock: Clock,
        own_roots: Callable[[], Sequence[x509.Certificate]],
        own_trust_domain: str,
    ) -> None:
        self.relationships = tuple(relationships)
        self.store = store
        self.clock = clock
        self.own_roots = own_roots
        self.own_trust_domain = own_trust_domain
        self.domains: dict[str, FederatedDomain] = {}  # replaced whole, never mutated (scrapes)
        self._listeners: list[Callable[[], None]] = []
        self._followers: dict[str, asyncio.Task[None]] = {}
        self._running = False

    def on_change(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def load(self) -> None:
        """The bundle in force for each relationship; an unusable initial bundle is a
        ConfigError at start (there is nothing good to keep yet)."""
        self.domains = {
            rel.trust_domain: FederatedDomain(rel, self._initial(rel)) for rel in self.relationships
        }

    def apply(self, relationships: Sequence[FederationRelationship]) -> list[str]:
        """Put these relationships in force; what changed, one phrase per trust domain (empty:
        nothing). All or nothing: an unusable initial bundle is a ConfigError and the
        relationships in force stay. Listeners hear of it once, however many changed."""
        wanted = {rel.trust_domain: rel for rel in relationships}
        domains, restarted, changes = {}, [], []
        for td, rel in wanted.items():
            held = self.domains.get(td)
            if held is not None and held.relationship == rel and not self._reseeded(rel):
                domains[td] = held
                continue
            domains[td] = FederatedDomain(rel, self._initial(rel))
            restarted.append(td)
            changes.append(f"{td} {'changed' if held is not None else 'added'}")
        removed = sorted(set(self.domains) - set(wanted))
        changes += [f"{td} removed" for td in removed]
        if not changes:
            return []
        for td in removed:
            self.store.unpublish(FETCHED + td)  # re-adding it starts from its initial bundle
            self.store.unpublish(SEEDED + td)
        for td in (*removed, *restarted):
            follower = self._followers.pop(td, None)
            if follower is not None:
                follower.cancel()
        self.relationships, self.domains = tuple(relationships), domains
        if self._running:
            for td in restarted:
                self._start(td)
        self._notify()
        return changes

    def _reseeded(self, rel: FederationRelationship) -> bool:
        """Whether the relationship's initial bundle file changed since it was seeded."""
        if rel.trust_bundle is None:
            return False
        try:
            data = rel.trust_bundle.read_bytes()
        except OSError:
            return True  # _initial says why
        return self.store.published_version(SEEDED + rel.trust_domain) != _digest(data)

    def _initial(self, rel: FederationRelationship) -> SpiffeBundle:
        td = rel.trust_domain
        stored = self.store.published(FETCHED + td)
        seed_digest = None
        if rel.trust_bundle is not None:
            try:
                data = rel.trust_bundle.read_bytes()
            except OSError as exc:
                raise ConfigError(f"{rel.trust_bundle}: cannot read: {exc.strerror}") from exc
            seed_digest = _digest(data)
            if stored is None or self.store.published_version(SEEDED + td) != seed_digest:
                try:
                    bundle = load_bundle_text(data, td, str(rel.trust_bundle))
                except SvidError as exc:
                    raise ConfigError(f"federates-with.{td}.trust-bundle: {exc}") from exc
                self._store(bundle)
                self.store.publish(SEEDED + td, seed_digest, b"")
                return bundle
        if stored is None:
            raise ConfigError(f"federates-with.{td}: no bundle of {td} yet: give trust-bundle")
        try:
            return parse_bundle(stored.data, td, f"the stored bundle of {td}")
        except SvidError as exc:
            raise ConfigError(str(exc)) from exc

    def _store(self, bundle: SpiffeBundle) -> None:
        data = encode_bundle(bundle)
        self.store.publish(FETCHED + bundle.trust_domain, _digest(data), data)

    def bundles(self) -> dict[str, tuple[x509.Certificate, ...]]:
        return {td: d.bundle.x509_authorities for td, d in self.domains.items()}

    def roots_for(self, trust_domain: str) -> Sequence[x509.Certificate]:
        """The bundle that authenticates an endpoint whose ID is in this trust domain."""
        if trust_domain == self.own_trust_domain:
            return self.own_roots()
        domain = self.domains.get(trust_domain)
        return domain.bundle.x509_authorities if domain is not None else ()

    def status(self) -> dict[str, dict[str, object]]:
        return {td: d.status() for td, d in sorted(self.domains.items())}

    async def refresh(self, trust_domain: str) -> bool:
        """One fetch for this trust domain; True if the bundle in force changed."""
        domain = self.domains[trust_domain]
        rel = domain.relationship
        try:
            fetched = await fetch_bundle(
                rel.url,
                trust_domain,
                rel.endpoint_id,
                self.roots_for(rel.endpoint_id.trust_domain),
                self.clock(),
            )
            new = take_fetched(domain.bundle, fetched)
        except (FetchError, SvidError) as exc:
            if str(exc) != domain.error:
                log.error("federated bundle of %s not refreshed, keeping the last good one "
                          "(%d root(s)): %s", trust_domain,
                          len(domain.bundle.x509_authorities), exc)  # fmt: skip
            domain.error = str(exc)
            self._notify()
            return False
        domain.refreshed, domain.error = self.clock(), ""
        if new is None:
            self._notify()
            return False
        if not new.same_keys(domain.bundle):
            log.info("federated bundle of %s: sequence %s, %d root(s)", trust_domain,
                     new.sequence, len(new.x509_authorities))  # fmt: skip
        domain.bundle = new
        self._store(new)
        self._notify()
        return True

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()

    async def _follow(self, trust_domain: str) -> None:
        failures = 0
        while True:
            try:
                await self.refresh(trust_domain)
                failures = failures + 1 if self.domains[trust_domain].error else 0
            except Exception:  # a follower that dies silently would freeze this bundle
                log.exception("refreshing the federated bundle of %s failed", trust_domain)
                failures += 1
            await asyncio.sleep(retry_interval(self.domains[trust_domain].bundle, failures))

    def _start(self, trust_domain: str) -> None:
        self._followers[trust_domain] = asyncio.create_task(
            self._follow(trust_domain), name=f"federated bundle of {trust_domain}"
        )

    async def run(self) -> None:
        """Follow every relationship's endpoint, those `apply` adds too, until cancelled."""
        self._running = True
        for td in self.domains:
            self._start(td)
        try:
            await asyncio.Event().wait()
        finally:
            self._running = False
            followers = list(self._followers.values())
            self._followers.clear()
            for follower in followers:
                follower.cancel()
            await asyncio.gather(*followers, return_exceptions=True)
