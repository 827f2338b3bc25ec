"""Where the sidecar's own identity comes from: an `SvidSource` gives the current `WorkloadIdentity`
(SVID chain, key, trust bundles) and tells subscribers when it rotates.

`StaticSvidSource` serves tests and fixed files; `WorkloadApiSvidSource` follows the node agent's
SPIFFE Workload API stream on the event loop (sidecar_tls.workload_api.grpc_stream: no grpc, no spiffe package).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from meshward_common.errors import NotReady, SpiffeIdError, SvidError
from meshward_common.spiffe_id import SpiffeId
from meshward_common.svid import key_problem, leaf_problems, spiffe_id_of
from sidecar_tls.workload_api.grpc_stream import WORKLOAD_API_METADATA, follow_stream
from sidecar_tls.workload_api.x509svid_wire import (
    X509SVID_REQUEST,
    X509SvidResponse,
    decode_x509svid_response,
    split_der_certificates,
)

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


FETCH_X509_SVID = "/SpiffeWorkloadAPI/FetchX509SVID"


class WorkloadApiSvidSource(SvidSource):
    """The node agent's Workload API `FetchX509SVID` stream (our own small gRPC client): every
    message replaces the identity; a stream failure reconnects with backoff and keeps the last SVID;
    an unusable message is logged in one line and ignored (the last good SVID stays)."""

    def __init__(
        self, socket_path: str, initial_backoff: float = 0.2, max_backoff: float = 5.0
    ) -> None:
        super().__init__()
        self._socket = socket_path
        self._initial_backoff = initial_backoff
        self._max_backoff = max_backoff
        self._task: asyncio.Task[None] | None = None
        self.rejected = 0  # messages refused (malformed or breaking the SVID rules)

    async def start(self) -> None:
        self._task = asyncio.create_task(
            follow_stream(
                self._socket,
                FETCH_X509_SVID,
                lambda: X509SVID_REQUEST,
                self._on_message,
                WORKLOAD_API_METADATA,
                what="workload API FetchX509SVID",
                initial_backoff=self._initial_backoff,
                max_backoff=self._max_backoff,
            )
        )

    def _on_message(self, message: bytes) -> None:
        try:
            identity = identity_from_response(decode_x509svid_response(message))
        except SvidError as exc:
            self.rejected += 1
            log.error("workload API sent an unusable SVID, keeping the last one: %s", exc)
            return
        self.set(identity)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()


def identity_from_response(response: X509SvidResponse) -> WorkloadIdentity:
    """The default (first) SVID of a Workload API response, with its own and federated bundles."""
    if not response.svids:
        raise SvidError(["X509SVIDResponse has no SVID"])
    svid = response.svids[0]
    try:
        chain = tuple(
            x509.load_der_x509_certificate(d) for d in split_der_certificates(svid.x509_svid)
        )
        roots = tuple(
            x509.load_der_x509_certificate(d) for d in split_der_certificates(svid.bundle)
        )
        key = serialization.load_der_private_key(svid.x509_svid_key, password=None)
        federated = {
            td.removeprefix("spiffe://"): tuple(
                x509.load_der_x509_certificate(d) for d in split_der_certificates(der)
            )
            for td, der in response.federated_bundles.items()
        }
    except (
        ValueError,
        TypeError,
        UnsupportedAlgorithm,
    ) as exc:  # cryptography's and the splitter's
        raise SvidError([f"X509SVIDResponse for {svid.spiffe_id!r}: {exc}"]) from exc
    # The mesh's one key rule; the isinstance only narrows: key_problem passes EC and RSA alone.
    problem = key_problem(key.public_key())
    if problem or not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise SvidError([f"X509SVIDResponse for {svid.spiffe_id!r}: {problem}"])
    if not chain:
        raise SvidError([f"X509SVIDResponse for {svid.spiffe_id!r}: empty certificate chain"])
    if _spki(key.public_key()) != _spki(chain[0].public_key()):
        raise SvidError([f"X509SVIDResponse for {svid.spiffe_id!r}: key does not match the leaf"])
    try:
        leaf_id = spiffe_id_of(chain[0])
    except SpiffeIdError as exc:
        raise SvidError([f"X509SVIDResponse for {svid.spiffe_id!r}: {exc}"]) from exc
    if svid.spiffe_id and svid.spiffe_id != str(leaf_id):
        raise SvidError([f"X509SVIDResponse names {svid.spiffe_id!r} but the leaf is {leaf_id}"])
    own_td = leaf_id.trust_domain
    return WorkloadIdentity(chain=chain, key=key, bundles={**federated, own_td: roots})


def _spki(public_key: Any) -> bytes:
    return bytes(
        public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def identity_from_parts(
    chain: Sequence[x509.Certificate],
    key: CertificateIssuerPrivateKeyTypes,
    roots: Sequence[x509.Certificate],
    trust_domain: str | None = None,
) -> WorkloadIdentity:
    td = trust_domain or spiffe_id_of(chain[0]).trust_domain
    return WorkloadIdentity(chain=tuple(chain), key=key, bundles={td: tuple(roots)})
