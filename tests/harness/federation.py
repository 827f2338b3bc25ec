"""Two meshes that federate, for tests: each control plane's SPIFFE bundle endpoint on a free
loopback port and a config file naming the other's endpoint and initial bundle.

    b_port = free_port()
    config = federation_config(tmp_path / "a.yaml", "b.example", b_port, b_bundle_file)
    run_control_plane(..., trust_domain="a.example",
                      extra_args=("--config", str(config), *bundle_endpoint_args(a_port)))
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.harness.process import REPO

REFRESH_HINT = "2s"  # the federated side refreshes every second (a quarter hint, at least 1 s)
SPIFFE_CLIENT = REPO / "tools" / "bin" / "spiffeclient"


def endpoint_id(trust_domain: str) -> str:
    return f"spiffe://{trust_domain}/meshward/control-plane"


def bundle_endpoint_args(port: int, refresh_hint: str = REFRESH_HINT) -> tuple[str, ...]:
    return (
        "--bundle-endpoint-listen", f"127.0.0.1:{port}",
        "--bundle-endpoint-refresh-hint", refresh_hint,
    )  # fmt: skip


def federation_config(
    path: Path, peer_td: str, peer_port: int, peer_bundle: Path, peer_endpoint_id: str = ""
) -> Path:
    doc = {
        "federates-with": {
            peer_td: {
                "bundle-endpoint-url": f"https://127.0.0.1:{peer_port}/",
                "bundle-endpoint-profile": "https_spiffe",
                "endpoint-spiffe-id": peer_endpoint_id or endpoint_id(peer_td),
                "trust-bundle": str(peer_bundle),
            }
        }
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def dev_certs(out: Path, trust_domain: str) -> Path:
    """An Istio plug-in CA directory for a trust domain (its root known before the CA starts)."""
    subprocess.run(
        [str(REPO / ".venv/bin/meshward"), "ca", "dev-certs", "--out", str(out),
         "--trust-domain", trust_domain, "--cluster", "cluster1"],
        cwd=REPO, check=True, capture_output=True,
    )  # fmt: skip
    return out / "cluster1"


def build_spiffe_client() -> Path:
    subprocess.run(["bash", str(REPO / "scripts/build_spiffe_client.sh")], cwd=REPO, check=True)
    return SPIFFE_CLIENT


def spiffe_client(*args: str, user: int | None = None) -> dict[str, Any]:
    """Run go-spiffe's view (tools/spiffe/spiffeclient) and return its JSON."""
    out = subprocess.run(
        [str(SPIFFE_CLIENT), *args], capture_output=True, text=True, timeout=60, check=False,
        user=user,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result
