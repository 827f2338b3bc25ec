"""The agent's serving half (front door, Workload API, SVID manager) in a background event loop.

The CA is replaced by `MiniCA` called in-process, so these tests exercise the real Unix socket,
the real front door and grpc server, and unmodified `spiffe` clients, without a control plane.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import tempfile
import threading
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any, TypeVar

from meshward_common.errors import NotReady
from meshward_common.protos import meshward_discovery_pb2 as mdpb
from meshward_common.registry import Workload
from meshward_common.spiffe_id import SpiffeId
from node_agent.attestation import ProcReader
from node_agent.front_door import FrontDoor, PeerTable
from node_agent.rotation import RotationSchedule
from node_agent.state import AgentState
from node_agent.workload_api import (
    Guard,
    MeshStateRelay,
    WorkloadApiServicer,
    add_servicers,
    new_server,
)
from node_agent.workload_svids import WorkloadSvidManager
from tests.node_agent.certs import MiniCA

T = TypeVar("T")


def mesh_state(
    workloads: Iterable[Workload], version: str, td: str = "cluster.local"
) -> mdpb.MeshState:
    return mdpb.MeshState(
        version_info=version,
        trust_domain=td,
        workloads=[
            mdpb.Workload(
                name=w.name,
                namespace=w.namespace,
                service_account=w.service_account,
                node=w.node,
                spiffe_id=str(w.spiffe_id(td)),
                netns=w.selector.netns if w.selector else "",
                uids=list(w.selector.uids) if w.selector else [],
            )
            for w in workloads
        ],
        root_namespace="istio-system",
    )


class InProcessAgent:
    def __init__(self, ttl: dt.timedelta, node: str = "node-1") -> None:
        self.ca = MiniCA()
        self.ca_up = True
        self.ttl = ttl
        self.issued: list[SpiffeId] = []
        self.refused = 0
        self.socket_path = Path(tempfile.mkdtemp(prefix="mwna-")) / "agent.sock"
        self.socket_path.parent.chmod(0o755)
        self.endpoint = f"unix://{self.socket_path}"
        self.node = node
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.version = 0

    # run a coroutine on the agent's loop from the test thread
    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 20) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call_soon(self, fn: Callable[[], Any]) -> None:
        async def run() -> None:
            fn()

        self.call(run())

    async def _issue(self, sid: SpiffeId, csr: str, ttl: dt.timedelta) -> list[Any]:
        if not self.ca_up:
            self.refused += 1
            raise NotReady("test CA is down")
        self.issued.append(sid)
        return self.ca.issue_for_csr(csr, sid, ttl)

    async def _start(self) -> None:
        self.state = AgentState(self.node)
        self.state.trust_domain = "cluster.local"
        self.state.set_bundle([self.ca.root])
        # Tests use TTLs of seconds: retry quickly while the CA is "down".
        schedule = RotationSchedule(backoff_initial=0.2, backoff_max=1.0)
        self.svids = WorkloadSvidManager(self.state, self._issue, self.ttl, schedule)
        self.peers = PeerTable()
        proc = ProcReader()
        guard = Guard(self.state, self.peers, proc)
        self.api = WorkloadApiServicer(self.state, guard, self.svids.ensure)
        self.server = new_server()
        add_servicers(self.server, self.api, MeshStateRelay(self.state, guard))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        self.front = FrontDoor(self.socket_path, self.port, self.peers, proc)
        await self.front.start()

    async def _stop(self) -> None:
        await self.svids.close()
        await self.front.stop()
        await self.server.stop(0)

    def start(self) -> InProcessAgent:
        self._thread.start()
        self.call(self._start())
        return self

    def stop(self) -> None:
        try:
            self.call(self._stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)
            shutil.rmtree(self.socket_path.parent, ignore_errors=True)

    def set_registry(self, workloads: Iterable[Workload]) -> None:
        self.version += 1
        state = mesh_state(workloads, f"v{self.version}")
        self.call_soon(lambda: self.state.set_mesh_state(state))

    def rotate_root(self) -> MiniCA:
        """A new root: the agent learns it from the next chain the CA returns (root last)."""
        self.ca = MiniCA(name="meshward test root 2")
        return self.ca
