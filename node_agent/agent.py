"""The node agent process: node identity, control-plane link, Workload API, and their lifecycles."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
from collections.abc import Callable

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from meshward_common.errors import ConfigError, MeshwardError, NotReady, SvidError
from meshward_common.spiffe_id import SpiffeId, node_id
from meshward_common.svid import pem_of, verify_x509_svid
from node_agent import node_identity as ni
from node_agent.attestation import ProcReader
from node_agent.ca_client import (
    ClientCredential,
    create_certificate,
    make_channel,
    make_csr,
    split_root,
    stream_mesh_state,
    verify_control_plane,
)
from node_agent.config import AgentConfig
from node_agent.front_door import FrontDoor, PeerTable
from node_agent.rotation import RotationSchedule, seconds_until
from node_agent.state import AgentState
from node_agent.workload_api import Guard, MeshStateRelay, WorkloadApiServicer, add_servicers
from node_agent.workload_svids import WorkloadSvidManager, utcnow

log = logging.getLogger("node_agent")

BOOTSTRAP_ATTEMPTS = 5


class ControlPlaneLink:
    """One gRPC channel to the CA, rebuilt (after a secure-naming check) whenever it failed."""

    def __init__(self, address: str, state: AgentState) -> None:
        self.address = address
        self.state = state
        self.credential: ClientCredential | None = None
        self._channel: grpc.aio.Channel | None = None

    def bundle_pem(self) -> bytes:
        return pem_of(self.state.bundle)

    async def channel(self) -> grpc.aio.Channel:
        if self._channel is None:
            await verify_control_plane(self.address, self.bundle_pem())
            self._channel = make_channel(self.address, self.bundle_pem(), self.credential)
        return self._channel

    async def reset(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()

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


class NodeAgent:
    def __init__(self, config: AgentConfig, clock: Callable[[], dt.datetime] = utcnow) -> None:
        self.config = config
        self.clock = clock
        self.state = AgentState(config.node)
        self.link = ControlPlaneLink(config.ca_address, self.state)
        self.schedule = RotationSchedule()
        self.svids = WorkloadSvidManager(
            self.state, self.link.issue_workload, config.workload_ttl, self.schedule, clock
        )
        self.peers = PeerTable()
        self.node_svid: ni.NodeSvid | None = None
        self._server: grpc.aio.Server | None = None
        self._front: FrontDoor | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # -- node identity ------------------------------------------------------------------------
    async def establish_node_identity(self) -> None:
        cfg = self.config
        ni.check_state_dir(cfg.state_dir)
        roots = []
        saved_bundle = cfg.state_dir / ni.BUNDLE_FILE
        if saved_bundle.exists():
            roots.extend(ni.load_bundle(saved_bundle))
        if cfg.trust_bundle is not None:
            roots.extend(ni.load_bundle(cfg.trust_bundle))
        if not roots:
            raise ConfigError(
                "no trust bundle: give --trust-bundle (a copy of the CA's trust-bundle.pem)"
            )
        self.state.set_bundle(roots)
        key = ni.load_or_create_key(cfg.state_dir)
        svid = ni.load_node_svid(cfg.state_dir, key)
        now = self.clock()
        if svid is not None and now < svid.not_after:
            ni.check_node_svid(svid, cfg.node, now, cfg.state_dir)
        elif cfg.join_token:
            svid = await self._bootstrap(key, cfg.join_token)
        elif svid is not None:
            ni.check_node_svid(svid, cfg.node, now, cfg.state_dir)  # raises: expired
        else:
            raise ConfigError(
                f"no node SVID in {cfg.state_dir} and no join token: get one with "
                f"`meshward ca join-token --node {cfg.node}` and pass --join-token"
            )
        self._use_node_svid(svid)

    def _use_node_svid(self, svid: ni.NodeSvid) -> None:
        self.node_svid = svid
        self.state.trust_domain = svid.spiffe_id.trust_domain
        self.link.credential = ClientCredential(svid.key_pem(), svid.chain_pem())

    def _accept_node_chain(
        self, key: ec.EllipticCurvePrivateKey, chain: list[x509.Certificate]
    ) -> ni.NodeSvid:
        body, roots = split_root(chain)
        if not body:
            raise SvidError(["CA returned no node certificate"])
        self.state.add_roots(roots)
        got = verify_x509_svid(body, self.state.bundle, self.clock())
        if got != node_id(got.trust_domain, self.config.node):
            raise SvidError([f"CA issued {got}, expected the node identity of {self.config.node}"])
        if body[0].public_key() != key.public_key():
            raise SvidError(["node certificate is not for the node key"])
        svid = ni.NodeSvid(tuple(body), key)
        ni.save_node_svid(self.config.state_dir, svid)
        ni.save_bundle(self.config.state_dir, list(self.state.bundle))
        return svid

    async def _bootstrap(self, key: ec.EllipticCurvePrivateKey, token: str) -> ni.NodeSvid:
        last: Exception | None = None
        for attempt in range(BOOTSTRAP_ATTEMPTS):
            try:
                await verify_control_plane(self.config.ca_address, self.link.bundle_pem())
                channel = make_channel(self.config.ca_address, self.link.bundle_pem(), None)
                try:
                    chain = await create_certificate(
                        channel, make_csr(key, None), None, join_token=token
                    )
                finally:
                    await channel.close()
                svid = self._accept_node_chain(key, chain)
                log.info("bootstrapped: node SVID %s until %s", svid.spiffe_id, svid.not_after)
                return svid
            except NotReady as exc:
                last = exc
                await asyncio.sleep(self.schedule.backoff_cap(attempt) * random.random())  # noqa: S311
            except MeshwardError as exc:
                raise ConfigError(
                    f"bootstrap refused by the CA at {self.config.ca_address}: {exc}"
                ) from exc
        raise ConfigError(f"cannot bootstrap: {last}")

    async def _renew_node_svid(self) -> None:
        attempt = 0
        while True:
            svid = self.node_svid
            assert svid is not None
            now = self.clock()
            renew_at = self.schedule.renew_at(svid.not_before, svid.not_after, random.random())  # noqa: S311
            await asyncio.sleep(seconds_until(renew_at, now))
            while True:
                try:
                    channel = await self.link.channel()
                    chain = await create_certificate(channel, make_csr(svid.key, None), None)
                    new = self._accept_node_chain(svid.key, chain)
                except (MeshwardError, OSError) as exc:
                    await self.link.reset()
                    rand = random.random()  # noqa: S311 (jitter, not crypto)
                    delay = self.schedule.next_retry_delay(
                        attempt, rand, self.clock(), svid.not_after
                    )
                    attempt += 1
                    if self.clock() >= svid.not_after:
                        log.error(
                            "node SVID expired at %s and the CA is unreachable; once it is back "
                            "re-bootstrap with `meshward ca join-token --node %s`",
                            svid.not_after.isoformat(), self.config.node,
                        )  # fmt: skip
                    log.warning("node SVID renewal failed (retry in %.1fs): %s", delay, exc)
                    await asyncio.sleep(max(delay, 0.05))
                    continue
                attempt = 0
                self._use_node_svid(new)
                await self.link.reset()  # the next channel presents the new certificate
                log.info("node SVID renewed until %s", new.not_after.isoformat())
                break

    # -- registry -------------------------------------------------------------------------------
    async def _follow_mesh_state(self) -> None:
        attempt = 0
        while True:
            try:
                channel = await self.link.channel()
                version = self.state.mesh_state.version_info if self.state.mesh_state else ""
                async for mesh in stream_mesh_state(channel, version):
                    attempt = 0
                    self.state.set_mesh_state(mesh)
                    td = self.state.trust_domain
                    self.svids.retain_only(
                        {w.spiffe_id(td) for w in self.state.workloads_on_node()}
                    )
                    log.info("mesh state %s: %d workloads on this node",
                             mesh.version_info, len(self.state.workloads_on_node()))  # fmt: skip
            except (MeshwardError, OSError) as exc:
                log.warning("mesh state stream: %s", exc)
                await self.link.reset()
            delay = self.schedule.backoff(attempt, random.random())  # noqa: S311
            attempt += 1
            await asyncio.sleep(max(delay, 0.1))

    # -- serving --------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.establish_node_identity()
        proc = ProcReader()
        guard = Guard(self.state, self.peers, proc)
        api = WorkloadApiServicer(self.state, guard, self.svids.ensure, self.clock)
        relay = MeshStateRelay(self.state, guard)
        self._server = grpc.aio.server()
        add_servicers(self._server, api, relay)
        port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        self._front = FrontDoor(self.config.socket_path, port, self.peers, proc)
        try:
            await self._front.start()
        except BaseException:
            await self._server.stop(None)
            raise
        self._tasks = [
            asyncio.create_task(self._renew_node_svid(), name="node svid"),
            asyncio.create_task(self._follow_mesh_state(), name="mesh state"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        await self.svids.close()
        if self._front is not None:
            await self._front.stop()
        if self._server is not None:
            await self._server.stop(0.5)
        await self.link.reset()
