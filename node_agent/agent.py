"""The node agent process: node identity, control-plane link, Workload API, and their lifecycles."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
from collections.abc import Sequence
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from meshward_common.clock import Clock, utc_now
from meshward_common.errors import (
    ConfigError,
    MeshwardError,
    NotReady,
    RateLimited,
    SvidError,
)
from meshward_common.protos import meshward_discovery_pb2 as mdpb
from meshward_common.spiffe_id import node_id
from meshward_common.svid import (
    certificates_from_der,
    signing_cert_problems,
    spiffe_id_of,
)
from node_agent import node_identity as ni
from node_agent.attestation import ProcReader
from node_agent.ca_client import (
    ClientCredential,
    make_channel,
    split_root,
    stream_mesh_state,
    verify_control_plane,
)
from node_agent.ca_link import ControlPlaneLink, request_node_certificate
from node_agent.config import AgentConfig
from node_agent.front_door import FrontDoor, PeerTable
from node_agent.join_token import how_to_bootstrap
from node_agent.metrics import AgentMetrics
from node_agent.rotation import RotationSchedule, effective_start, seconds_until
from node_agent.state import AgentState, WorkloadRef
from node_agent.workload_api import (
    Guard,
    MeshStateRelay,
    WorkloadApiServicer,
    add_servicers,
    new_server,
)
from node_agent.workload_svids import WorkloadSvidManager, verify_issued_chain

log = logging.getLogger("node_agent")

BOOTSTRAP_ATTEMPTS = 3


class NodeAgent:
    def __init__(
        self,
        config: AgentConfig,
        clock: Clock = utc_now,
        metrics: AgentMetrics | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.metrics = metrics
        self.state = AgentState(config.node)
        self.link = ControlPlaneLink(config.ca_address, self.state)
        self.schedule = RotationSchedule()
        self.svids = WorkloadSvidManager(
            self.state,
            self.link.issue_workload,
            config.workload_ttl,
            self.schedule,
            clock,
            metrics=metrics,
        )
        self.peers = PeerTable()
        self.node_svid: ni.NodeSvid | None = None
        self._node_received_at: dt.datetime | None = None  # None: loaded from disk
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
        elif cfg.token_file is not None:
            svid = await self._bootstrap(key, read_token_file(cfg.token_file))
        elif svid is not None:
            ni.check_node_svid(svid, cfg.node, now, cfg.state_dir)  # raises: expired
        else:
            raise ConfigError(
                f"no node SVID in {cfg.state_dir} and no join token: get one with "
                f"{how_to_bootstrap(cfg.node)}"
            )
        self._use_node_svid(svid)

    def _use_node_svid(self, svid: ni.NodeSvid) -> None:
        self.node_svid = svid
        if self.metrics is not None:
            self.metrics.set_svid_expiry(str(svid.spiffe_id), svid.not_after)
        self.state.trust_domain = svid.spiffe_id.trust_domain
        self.link.credential = ClientCredential(svid.key_pem(), svid.chain_pem())

    def _accept_node_chain(
        self, key: ec.EllipticCurvePrivateKey, chain: list[x509.Certificate]
    ) -> ni.NodeSvid:
        # Our bundle is our trust domain's (learned from the first node SVID; the operator's
        # --trust-bundle is the bootstrap's): a node SVID naming another domain is refused.
        td = self.state.trust_domain or _trust_domain_of_leaf(chain)
        want = node_id(td, self.config.node)
        body = verify_issued_chain(self.state.bundle, want, key, chain, self.clock())
        svid = ni.NodeSvid(body, key)
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
                    chain = await request_node_certificate(channel, key, token)
                finally:
                    await channel.close()
                svid = self._accept_node_chain(key, chain)
                self._node_received_at = self.clock()
                log.info("bootstrapped: node SVID %s until %s", svid.spiffe_id, svid.not_after)
                return svid
            except (NotReady, RateLimited) as exc:  # the CA will serve us later: retry
                last = exc
                if attempt + 1 < BOOTSTRAP_ATTEMPTS:
                    jitter = random.random()  # noqa: S311 (jitter, not crypto)
                    await asyncio.sleep(self.schedule.backoff_cap(attempt) * jitter)
            except MeshwardError as exc:
                raise ConfigError(
                    f"bootstrap refused by the CA at {self.config.ca_address}: {exc}"
                ) from exc
        raise ConfigError(f"cannot bootstrap after {BOOTSTRAP_ATTEMPTS} attempts: {last}")

    async def _renew_node_svid(self) -> None:
        attempt = 0
        received_at: dt.datetime | None = self._node_received_at
        while True:
            svid = self.node_svid
            assert svid is not None
            now = self.clock()
            start = effective_start(svid.not_before, received_at)
            renew_at = self.schedule.renew_at(start, svid.not_after, random.random())  # noqa: S311
            await asyncio.sleep(seconds_until(renew_at, now))
            while True:
                try:
                    channel = await self.link.channel()
                    chain = await request_node_certificate(channel, svid.key, None)
                    new = self._accept_node_chain(svid.key, chain)
                except (MeshwardError, OSError) as exc:
                    await self.link.reset()
                    rand = random.random()  # noqa: S311 (jitter, not crypto)
                    delay = self.schedule.next_retry_delay(
                        attempt, rand, self.clock(), svid.not_after
                    )
                    attempt += 1
                    if self.metrics is not None:
                        self.metrics.record_rotation("node", "error")
                    if self.clock() >= svid.not_after:
                        log.error(
                            "node SVID expired at %s and the CA is unreachable; once it is back "
                            "re-bootstrap with %s",
                            svid.not_after.isoformat(), how_to_bootstrap(self.config.node),
                        )  # fmt: skip
                    log.warning("node SVID renewal failed (retry in %.1fs): %s", delay, exc)
                    await asyncio.sleep(max(delay, 0.05))
                    continue
                attempt = 0
                received_at = self.clock()
                self._use_node_svid(new)
                if self.metrics is not None:
                    self.metrics.record_rotation("node", "ok")
                self.link.retire()  # the next channel presents the new certificate
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
                    self._take_bundle(mesh)
                    self.state.set_mesh_state(mesh)
                    td = self.state.trust_domain
                    self.svids.retain_only(
                        {WorkloadRef.of(w, td) for w in self.state.workloads_on_node()}
                    )
                    log.info("mesh state %s: %d workloads on this node",
                             mesh.version_info, len(self.state.workloads_on_node()))  # fmt: skip
            except (MeshwardError, OSError) as exc:
                log.warning("mesh state stream: %s", exc)
                await self.link.reset()
            delay = self.schedule.backoff(attempt, random.random())  # noqa: S311
            attempt += 1
            await asyncio.sleep(max(delay, 0.1))

    def _take_bundle(self, mesh: mdpb.MeshState) -> None:
        """The control plane's bundle for our trust domain, from the stream we opened after
        verifying its server certificate: the one way our bundle changes after bootstrap (a new
        root arrives before anything is signed with it; an old one leaves once nothing it signed
        is valid). A bundle that is unreadable or holds no CA certificate is refused, one line."""
        own = self.state.trust_domain
        der = mesh.trust_bundles.get(own)
        if not der:
            return
        try:
            roots = _bundle_roots(der)
        except SvidError as exc:
            log.error("control plane sent an unusable trust bundle, keeping ours: %s", exc)
            return
        federated: dict[str, Sequence[x509.Certificate]] = {}
        for td, data in sorted(mesh.trust_bundles.items()):
            if td == own:
                continue
            try:
                federated[td] = _bundle_roots(data)
            except SvidError as exc:
                kept = self.state.federated_bundles.get(td)
                log.error("control plane sent an unusable bundle of %s, keeping %s: %s",
                          td, "ours" if kept else "none", exc)  # fmt: skip
                if kept:
                    federated[td] = kept
        before = set(self.state.federated_bundles)
        if self.state.set_bundle(roots, federated):
            ni.save_bundle(self.config.state_dir, list(self.state.bundle))
            log.info("trust bundle of %s: %d root(s); federated: %s", own, len(roots),
                     ", ".join(f"{td} ({len(r)})" for td, r in federated.items()) or "none")  # fmt: skip
            for gone in before - set(federated):
                log.info("federation with %s ended: its bundle is no longer trusted", gone)

    # -- serving --------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.establish_node_identity()
        proc = ProcReader()
        guard = Guard(self.state, self.peers, proc)
        api = WorkloadApiServicer(self.state, guard, self.svids.ensure, self.clock, self.metrics)
        relay = MeshStateRelay(self.state, guard, self.metrics)
        self._server = new_server()
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
        # Front door first: clients see their connection drop (UNAVAILABLE, which X509Source
        # retries). Stopping the gRPC server first would end their streams with CANCELLED, which
        # X509Source treats as final and closes for good.
        if self._front is not None:
            await self._front.stop()
        if self._server is not None:
            await self._server.stop(0.5)
        await self.link.close()


def _bundle_roots(der: bytes) -> list[x509.Certificate]:
    """The roots of one trust domain's bundle as the stream carries it; SvidError if unusable."""
    roots = certificates_from_der(der)
    for root in roots:
        problems = signing_cert_problems(root)
        if problems:
            raise SvidError([f"bundle root {root.subject.rfc4514_string()}: {p}" for p in problems])
    return roots


def _trust_domain_of_leaf(chain: list[x509.Certificate]) -> str:
    """At bootstrap we know no trust domain yet: the node SVID's own (verified with our bundle)."""
    body, _roots = split_root(chain)
    if not body:
        raise SvidError(["CA returned no node certificate"])
    return spiffe_id_of(body[0]).trust_domain


def read_token_file(path: Path) -> str:
    """The projected ServiceAccount token, read afresh (the kubelet rewrites it as it rotates)."""
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"--token-file {path}: cannot read: {exc.strerror}") from exc
    if not token:
        raise ConfigError(f"--token-file {path} is empty")
    return token
