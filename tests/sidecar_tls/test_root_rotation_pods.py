"""Root rotation under steady traffic: two pods (real network namespaces, istio-init's rules),
their sidecars fed by a real node agent and `meshward ca serve`; `meshward ca rotate-root` while
pod A's gRPC client calls pod B at a steady rate. No call fails, and afterwards no certificate in
the mesh chains to the old root."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from meshward.inspect.admin import sidecar_certs
from meshward.inspect.secrets import split_certs
from meshward_common.svid import verify_x509_svid
from tests.harness.control_plane import run_control_plane
from tests.harness.node_agent import run_node_agent
from tests.harness.pods import add_intercepted_pod, pod_network
from tests.sidecar_tls.test_grpc_pods import app, registry_yaml, start_grpc_pair
from tests.sidecar_tls.test_tracing_pods import wait_until

pytestmark = [pytest.mark.netns, pytest.mark.slow]

PREFIX, SUBNET = "mwrr", "10.213.176.0/24"
REPO = Path(__file__).resolve().parents[2]
TTL = "4s"  # each sidecar renews every ~2 s; the old root may leave 8 s (+5) after the switch


def test_rotating_the_root_under_load_fails_no_call(tmp_path: Path) -> None:
    with pod_network(PREFIX, SUBNET) as net:
        for name in "ab":
            add_intercepted_pod(net, name)
        net.set_hosts({n: [net.pod(n).ip] for n in "ab"})
        with (
            run_control_plane(tmp_path, registry_yaml(net), workload_ttl=TTL, max_ttl="8s") as cp,
            run_node_agent(tmp_path, cp, workload_ttl=TTL) as agent,
        ):
            logs = start_grpc_pair(net, tmp_path, agent.socket_path)
            (old,) = x509.load_pem_x509_certificates(cp.bundle_pem())

            result: dict[str, Any] = {}
            load = threading.Thread(
                target=lambda: result.update(app(net, "load", "b:9090", "40")), daemon=True
            )
            load.start()
            out = subprocess.run(
                [sys.executable, "-m", "meshward", "ca", "rotate-root",
                 "--state-dir", str(cp.state_dir), "--grace", "5s"],
                cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert out.returncode == 0, out.stderr
            load.join(timeout=150)
            assert result.get("failed") == 0, result
            assert result["unary_ok"] > 100, result
            assert "root rotation: done" in cp.log(), "the rotation finished within the load"

            (new,) = x509.load_pem_x509_certificates(cp.bundle_pem())
            assert new != old
            for name in "ab":

                def rotated(name: str = name) -> bool:
                    answer = sidecar_certs(net.pod(name).netns)
                    roots = [r["serial_number"] for r in answer["certificates"][0]["root_certs"]]
                    chain, _ = split_certs(answer)
                    now = dt.datetime.now(dt.UTC)
                    return roots == [format(new.serial_number, "x")] and bool(
                        verify_x509_svid(chain, [new], now)
                    )

                wait_until(f"sidecar {name} holds only the new root", rotated, logs=logs)
