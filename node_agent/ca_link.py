"""The agent's link to the control plane: one channel, secure naming, node certificate requests."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from meshward_common.errors import InvalidRequest, NotReady
from meshward_common.spiffe_id import SpiffeId
from meshward_common.svid import pem_of
from node_agent.ca_client import (
    ClientCredential,
    create_certificate,
    make_channel,
    make_csr,
    verify_control_plane,
)
from node_agent.state import AgentState

log = logging.getLogger(__name__)

# Asked for the node SVID. Longer than workload SVIDs on purpose: the node SVID must outlive a CA
# outage, or the agent cannot renew anything once the CA is back. A CA whose maximum TTL is
# shorter refuses it; then the agent takes the CA's default.
NODE_SVID_TTL = dt.timedelta(hours=24)


class ControlPlaneLink:
    """One gRPC channel to the CA, rebuilt (after a secure-naming check) whenever it failed."""

    def __init__(self, address: str, state: AgentState) -> None:
        self.address = address
        self.state = state
        self.credential: ClientCredential | None = None
        self._channel: grpc.aio.Channel | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._building = asyncio.Lock()

    def bundle_pem(self) -> bytes:
        return pem_of(self.state.bundle)

    async def channel(self) -> grpc.aio.Channel:
        # One builder at a time: concurrent callers (registry stream, workload renewals) would
        # otherwise each build a channel and leak all but one.
        async with self._building:
            if self._channel is None:
                await verify_control_plane(self.address, self.bundle_pem())
                self._channel = make_channel(self.address, self.bundle_pem(), self.credential)
            return self._channel

    async def reset(self) -> None:
        """The channel failed: drop it; the next user rebuilds it after a secure-naming check."""
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()

    async def close(self) -> None:
        for task in list(self._closing):
            task.cancel()
        await asyncio.gather(*self._closing, return_exceptions=True)
        await self.reset()

    def retire(self) -> None:
        """New credentials: new calls get a new channel; calls in flight on the old one finish.

        The old channel is closed after a grace period; a stream still on it then reconnects.
        """
        channel, self._channel = self._channel, None
        if channel is not None:
            task = asyncio.get_running_loop().create_task(_close_later(channel, 30.0))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def issue_workload(
        self, spiffe_id: SpiffeId, csr_pem: str, ttl: dt.timedelta
    ) -> list[x509.Certificate]:
        try:
            return await create_certificate(
                await self.channel(), csr_pem, ttl, impersonate=spiffe_id
            )
        except NotReady:
            await self.reset()
            raise


async def request_node_certificate(
    channel: grpc.aio.Channel, key: ec.EllipticCurvePrivateKey, join_token: str | None
) -> list[x509.Certificate]:
    """Ask for NODE_SVID_TTL; a CA whose maximum is shorter refuses it: then take its default."""
    csr = make_csr(key, None)
    try:
        return await create_certificate(channel, csr, NODE_SVID_TTL, join_token=join_token)
    except InvalidRequest as exc:
        log.warning("CA refused a %s node SVID (%s); asking for its default", NODE_SVID_TTL, exc)
    return await create_certificate(channel, csr, None, join_token=join_token)


async def _close_later(channel: grpc.aio.Channel, delay: float) -> None:
    try:
        await asyncio.sleep(delay)
    finally:
        await channel.close()
