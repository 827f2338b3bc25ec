"""Figures for the Workload API path (prints, asserts nothing): `python -m tests.node_agent.bench_workload_api`.

- first SVID: a new attested connection, FetchX509SVID, key generation and (in-process) signing;
- attested call: a new connection through the front door + one FetchX509Bundles message,
  against the same call on a connection made straight to the internal gRPC port (baseline; that
  call is refused with PERMISSION_DENIED, which costs the same round trip without attestation).
"""

from __future__ import annotations

import datetime as dt
import os
import statistics
import time

import grpc
from spiffe._proto import workload_pb2, workload_pb2_grpc

from meshward_common.registry import Selector, Workload
from tests.node_agent.inprocess import InProcessAgent

HEADER = (("workload.spiffe.io", "true"),)
N = 50


def one_call(target: str, method: str) -> float:
    start = time.perf_counter()
    with grpc.insecure_channel(target) as channel:
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
        call = getattr(stub, method)
        request = (
            workload_pb2.X509SVIDRequest()
            if method == "FetchX509SVID"
            else workload_pb2.X509BundlesRequest()
        )
        try:
            next(iter(call(request, metadata=HEADER, timeout=10)))
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.PERMISSION_DENIED:
                raise
    return (time.perf_counter() - start) * 1000


def main() -> None:
    me = Workload(name="me", namespace="default", service_account="bench", node="node-1",
                  selector=Selector(netns="host", uids=(os.getuid(),)))  # fmt: skip
    agent = InProcessAgent(ttl=dt.timedelta(hours=1)).start()
    try:
        agent.set_registry([me])
        unix = f"unix:{agent.socket_path}"
        first = one_call(unix, "FetchX509SVID")
        attested = [one_call(unix, "FetchX509Bundles") for _ in range(N)]
        direct = [one_call(f"127.0.0.1:{agent.port}", "FetchX509Bundles") for _ in range(N)]
    finally:
        agent.stop()
    print(f"first SVID (attest + P-256 key + sign): {first:.1f} ms")
    print(
        f"new connection + FetchX509Bundles via front door: median {statistics.median(attested):.2f} ms, "
        f"p90 {statistics.quantiles(attested, n=10)[-1]:.2f} ms (n={N})"
    )
    print(
        f"baseline, straight to the gRPC port (refused):    median {statistics.median(direct):.2f} ms, "
        f"p90 {statistics.quantiles(direct, n=10)[-1]:.2f} ms (n={N})"
    )


if __name__ == "__main__":
    main()
