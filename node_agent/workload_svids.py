"""Workload SVIDs: a key per identity made here, the certificate from the CA, rotated on schedule.

An identity's loop starts the first time an attested caller needs it; it then renews at the
schedule's jittered half-life, retries with backoff while the CA is unreachable, and meanwhile the
current SVID keeps being served (the streams check expiry themselves). Every issued chain is
verified against the bundle before it is served: `X509Source` closes for good on a bad message.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
from collections.abc import Awaitable, Callable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from meshward_common.clock import Clock, utc_now
from meshward_common.errors import MeshwardError, SvidError
from meshward_common.spiffe_id import SpiffeId
from meshward_common.svid import verify_x509_svid_in
from node_agent.ca_client import make_csr, split_root
from node_agent.metrics import AgentMetrics
from node_agent.rotation import RotationSchedule, effective_start, seconds_until
from node_agent.state import AgentState, WorkloadRef, WorkloadSvid

log = logging.getLogger(__name__)

# (identity, CSR PEM, requested TTL) -> chain as the CA returned it (leaf first, root last)
Issuer = Callable[[SpiffeId, str, dt.timedelta], Awaitable[list[x509.Certificate]]]


def verify_issued_chain(
    bundle: Sequence[x509.Certificate],
    expected: SpiffeId,
    key: ec.EllipticCurvePrivateKey,
    chain: Sequence[x509.Certificate],
    now: dt.datetime,
) -> tuple[x509.Certificate, ...]:
    """The chain (leaf first, without roots) the CA answered, checked against the bundle we
    already hold for `expected`'s trust domain: the identity we asked for, our key, in validity.

    A root in the answer is never added to the bundle: an answer is not a bundle update, and
    trusting a root because a chain carries it would let any self-signed chain verify. Roots
    enter only through `AgentState.set_bundle`: the operator's --trust-bundle at start and the
    control plane's authenticated discovery stream (`NodeAgent._take_bundle`)."""
    body, _roots = split_root(chain)
    if not body:
        raise SvidError([f"CA returned no certificate for {expected}"])
    got = verify_x509_svid_in(body, {expected.trust_domain: bundle}, now)
    problems = []
    if got != expected:
        problems.append(f"CA issued {got}, asked for {expected}")
    if body[0].public_key() != key.public_key():
        problems.append("issued certificate is not for the key we generated")
    if problems:
        raise SvidError(problems)
    return tuple(body)


def accept_chain(
    state: AgentState,
    spiffe_id: SpiffeId,
    key: ec.EllipticCurvePrivateKey,
    chain: list[x509.Certificate],
    now: dt.datetime,
) -> WorkloadSvid:
    """A workload's chain from the CA, checked before it is served (see verify_issued_chain)."""
    return WorkloadSvid(
        spiffe_id, verify_issued_chain(state.bundle, spiffe_id, key, chain, now), key
    )


class WorkloadSvidManager:
    def __init__(
        self,
        state: AgentState,
        issuer: Issuer,
        ttl: dt.timedelta,
        schedule: RotationSchedule | None = None,
        clock: Clock = utc_now,
        rand: Callable[[], float] = random.random,
        metrics: AgentMetrics | None = None,
    ) -> None:
        self.state = state
        self.issuer = issuer
        self.ttl = ttl
        self.schedule = schedule or RotationSchedule()
        self.clock = clock
        self.rand = rand
        self.rotations = 0
        self.metrics = metrics
        self._tasks: dict[WorkloadRef, asyncio.Task[None]] = {}

    def ensure(self, ref: WorkloadRef) -> None:
        """Start keeping an SVID for this workload (idempotent)."""
        task = self._tasks.get(ref)
        if task is None or task.done():
            self._tasks[ref] = asyncio.create_task(self._keep(ref), name=f"svid {ref}")

    def retain_only(self, wanted: set[WorkloadRef]) -> None:
        """Stop rotating (and forget) workloads no longer registered on this node."""
        for ref in list(self._tasks):
            if ref not in wanted:
                self._tasks.pop(ref).cancel()
                self.state.drop_svid(ref)
                if self.metrics is not None and all(r.spiffe_id != ref.spiffe_id for r in wanted):
                    self.metrics.forget_svid(str(ref.spiffe_id))

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task

    async def issue(self, spiffe_id: SpiffeId) -> WorkloadSvid:
        key = ec.generate_private_key(ec.SECP256R1())
        chain = await self.issuer(spiffe_id, make_csr(key, spiffe_id), self.ttl)
        return accept_chain(self.state, spiffe_id, key, chain, self.clock())

    async def _keep(self, ref: WorkloadRef) -> None:
        spiffe_id = ref.spiffe_id
        attempt = 0
        renew_at: dt.datetime | None = None
        while True:
            now = self.clock()
            current = self.state.svid(ref)
            if current is None or renew_at is None or now >= renew_at:
                try:
                    svid = await self.issue(spiffe_id)  # a new key every time
                except (MeshwardError, OSError) as exc:
                    held = current.not_after if current else None
                    delay = self.schedule.next_retry_delay(attempt, self.rand(), now, held)
                    attempt += 1
                    if self.metrics is not None:
                        self.metrics.record_rotation("workload", "error")
                    expired = held is not None and now >= held
                    log.warning(
                        "SVID for %s not renewed (attempt %d, retry in %.1fs%s): %s",
                        ref, attempt, delay, ", current one EXPIRED" if expired else "", exc,
                    )  # fmt: skip
                    await asyncio.sleep(max(delay, 0.05))
                    continue
                attempt = 0
                self.state.put_svid(ref, svid)
                self.rotations += 1
                if self.metrics is not None:
                    self.metrics.record_rotation("workload", "ok")
                    self.metrics.set_svid_expiry(str(spiffe_id), svid.not_after)
                start = effective_start(svid.not_before, now)
                renew_at = self.schedule.renew_at(start, svid.not_after, self.rand())
                log.info(
                    "SVID for %s issued, valid until %s, renewing at %s",
                    ref, svid.not_after.isoformat(), renew_at.isoformat(),
                )  # fmt: skip
                continue
            await asyncio.sleep(seconds_until(renew_at, now))
