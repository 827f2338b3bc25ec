"""Where the sidecar's own identity comes from: an `SvidSource` gives the current `WorkloadIdentity`
(SVID chain, key, trust bundles) and tells subscribers when it rotates.

`StaticSvidSource` serves tests and fixed files; `WorkloadApiSvidSource` wraps the `spiffe` package's
`X509Source` (the node agent's SPIFFE Workload API), whose update callback runs on its own thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from meshward_common.errors import NotReady, SvidError
from meshward_common.spiffe_id import SpiffeId
from meshward_common.svid import leaf_problems, spiffe_id_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkloadIdentity:
    """This workload's X.509-SVID (leaf first), its private key and the trust bundles it accepts."""

    chain: tuple[x509.Certificate, ...]
    key: CertificateIssuerPrivateKeyTypes = field(repr=False)
    bundles: Mapping[str, tuple[x509.Certificate, ...]]  # trust domain -> roots

    def __post_init__(self) -> None:
        if not self.chain:
            raise SvidError(["own SVID has an empty chain"])
        problems = leaf_problems(self.chain[0])
        if problems:
            raise SvidError([f"own SVID: {p}" for p in problems])
        if not self.bundles:
            raise SvidError(["no trust bundle for the own SVID"])

    @property
    def spiffe_id(self) -> SpiffeId:
        return spiffe_id_of(self.chain[0])

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    def all_roots(self) -> list[x509.Certificate]:
        return [root for roots in self.bundles.values() for root in roots]


Listener = Callable[[WorkloadIdentity], None]


class SvidSource:
    """Holds the current identity; `subscribe` callbacks run on the event loop on every change."""

    def __init__(self) -> None:
        self._current: WorkloadIdentity | None = None
        self._listeners: list[Listener] = []

    def current(self) -> WorkloadIdentity:
        if self._current is None:
            raise NotReady("no SVID loaded yet from the Workload API")
        return self._current

    @property
    def ready(self) -> bool:
        return self._current is not None

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)
        if self._current is not None:
            listener(self._current)

    def set(self, identity: WorkloadIdentity) -> None:
        """Install a new identity (rotation); listeners rebuild their TLS contexts."""
        self._current = identity
        for listener in list(self._listeners):
            listener(identity)

    async def start(self) -> None:
        return None

    def close(self) -> None:
        return None


class StaticSvidSource(SvidSource):
    """An identity given directly (tests, files); rotate it with `set`."""

    def __init__(self, identity: WorkloadIdentity) -> None:
        super().__init__()
        self._current = identity


class WorkloadApiSvidSource(SvidSource):
    """The node agent's Workload API through `spiffe.X509Source`; retries until the agent answers."""

    def __init__(self, socket_path: str, retry_seconds: float = 1.0) -> None:
        super().__init__()
        self._socket = socket_path if socket_path.startswith("unix:") else "unix://" + socket_path
        self._retry = retry_seconds
        self._source: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = threading.Event()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._connect_loop())

    async def _connect_loop(self) -> None:
        assert self._loop is not None
        while not self._closed.is_set():
            try:
                source = await self._loop.run_in_executor(None, self._open_source)
            except Exception as exc:  # the agent may not be up yet: retry, keep the last SVID
                log.warning("workload API %s not available: %s; retrying", self._socket, exc)
                await asyncio.sleep(self._retry)
                continue
            self._source = source
            # X509Source closes for good on a stream error: watch it and reopen.
            while not self._closed.is_set() and not source.is_closed():  # noqa: ASYNC110
                await asyncio.sleep(self._retry)  # X509Source has no close callback: poll
            if not self._closed.is_set():
                log.warning("workload API stream closed; reconnecting")

    def _open_source(self) -> Any:
        from spiffe import X509Source  # the spiffe package's stubs; never our own

        source = X509Source(socket_path=self._socket, timeout_in_seconds=5)
        source.subscribe_for_updates(lambda: self._on_update(source))
        self._on_update(source)
        return source

    def _on_update(self, source: Any) -> None:
        try:
            identity = identity_from_x509_context(source.get_x509_context())
        except (SvidError, ValueError) as exc:
            log.error("workload API sent an unusable SVID: %s", exc)
            return
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.set, identity)

    def close(self) -> None:
        self._closed.set()
        if self._task is not None:
            self._task.cancel()
        if self._source is not None:
            self._source.close()


def identity_from_x509_context(context: Any) -> WorkloadIdentity:
    svid = context.default_svid
    bundles: dict[str, tuple[x509.Certificate, ...]] = {}
    for bundle in context.x509_bundle_set.bundles:
        bundles[bundle.trust_domain.name] = tuple(bundle.x509_authorities)
    return WorkloadIdentity(chain=tuple(svid.cert_chain), key=svid.private_key, bundles=bundles)


def identity_from_parts(
    chain: Sequence[x509.Certificate],
    key: CertificateIssuerPrivateKeyTypes,
    roots: Sequence[x509.Certificate],
    trust_domain: str | None = None,
) -> WorkloadIdentity:
    td = trust_domain or spiffe_id_of(chain[0]).trust_domain
    return WorkloadIdentity(chain=tuple(chain), key=key, bundles={td: tuple(roots)})
