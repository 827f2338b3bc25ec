"""A running control plane (`meshward ca serve --config FILE`, trust domain a.example) follows its
config file: a `federates-with` relationship added to it reaches A's node agent's Workload API (the
`spiffe` package's client) as a federated bundle with no restart, a bad edit is one log line naming
file and line with the relationships in force kept, a restart-only key changed is one line with
nothing else disturbed, and a removed relationship leaves the Workload API.

The file is mounted as Kubernetes mounts a ConfigMap: `config.yaml` is a symlink through `..data`,
a symlink to a timestamped directory that each update replaces by one rename (what kubelet's
atomic writer does; there is no kubelet here, so the test does the swap on disk)."""

from __future__ import annotations

import itertools
import os
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from spiffe import TrustDomain, WorkloadApiClient

from meshward.inspect.checks import config_check
from tests.ca.test_federation import bundle_show, sha256s, status, wait_until
from tests.harness.control_plane import ControlPlane, free_port, run_control_plane
from tests.harness.federation import bundle_endpoint_args, endpoint_id
from tests.harness.node_agent import run_node_agent

pytestmark = pytest.mark.slow

A, B = "a.example", "b.example"
REGISTRY_A = f"""workloads:
  - name: tester
    namespace: default
    serviceAccount: tester
    node: node-1
    selector: {{netns: host, uids: [{os.getuid()}]}}
"""
_versions = itertools.count(1)


def configmap_update(mount: Path, text: str) -> None:
    """Update `mount/config.yaml` as kubelet updates a ConfigMap volume."""
    mount.mkdir(exist_ok=True)
    data = mount / "..data"
    old = data.resolve() if data.is_symlink() else None
    new = mount / f"..2026_12_02_{next(_versions):04d}"
    new.mkdir()
    (new / "config.yaml").write_text(text)
    tmp = mount / "..data_tmp"
    tmp.symlink_to(new.name)
    tmp.rename(data)  # the atomic step: readers see the old file or the new, never a mix
    if not (mount / "config.yaml").is_symlink():
        (mount / "config.yaml").symlink_to("..data/config.yaml")
    if old is not None:
        (old / "config.yaml").unlink()
        old.rmdir()


def config_text(workers: int, federates_with: str = "") -> str:
    return f"workers: {workers}\nrate-limit: 500\n" + (
        f"federates-with:\n{federates_with}" if federates_with else ""
    )


def relationship(b_port: int, initial: Path, endpoint: str = "") -> str:
    return (
        f"  {B}:\n"
        f"    bundle-endpoint-url: https://127.0.0.1:{b_port}/\n"
        f"    bundle-endpoint-profile: https_spiffe\n"
        f"    endpoint-spiffe-id: {endpoint or endpoint_id(B)}\n"
        f"    trust-bundle: {initial}\n"
    )


ROOTS = "meshward_ca_federated_bundle_roots"


def metrics(port: int) -> dict[str, float]:
    """The supervisor's /metrics, `name{labels}` -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def federated(agent_endpoint: str) -> dict[str, list[str]]:
    """What an unmodified SPIFFE client sees: each trust domain's roots, by sha256."""
    with WorkloadApiClient(socket_path=agent_endpoint) as client:
        bundles = client.fetch_x509_bundles(timeout=10)
    out = {}
    for td in (A, B):
        bundle = bundles.get_bundle_for_trust_domain(TrustDomain(td))
        if bundle is not None:
            out[td] = sha256s(list(bundle.x509_authorities))
    return out


@pytest.fixture
def mesh_b(tmp_path: Path) -> Iterator[tuple[ControlPlane, int]]:
    port = free_port()
    with run_control_plane(
        tmp_path / "b", "workloads: []\n", trust_domain=B, extra_args=bundle_endpoint_args(port)
    ) as cp:
        yield cp, port


def test_federates_with_edited_in_a_configmap_mount_is_applied_without_restart(
    tmp_path: Path, mesh_b: tuple[ControlPlane, int]
) -> None:
    cp_b, b_port = mesh_b
    initial = bundle_show(cp_b, tmp_path / "b.json")
    b_roots = sha256s(x509.load_pem_x509_certificates(cp_b.bundle_pem()))
    mount = tmp_path / "ca-config"
    configmap_update(mount, config_text(1))
    config = mount / "config.yaml"
    metrics_port = free_port()
    args = ("--config", str(config), "--metrics-listen", f"127.0.0.1:{metrics_port}")
    with (
        run_control_plane(tmp_path / "a", REGISTRY_A, trust_domain=A, extra_args=args) as cp_a,
        run_node_agent(tmp_path, cp_a) as agent,
    ):

        def logs() -> str:
            return f"== A\n{cp_a.log()[-4000:]}\n== agent\n{agent.log()[-2000:]}"

        def count(text: str) -> int:
            return cp_a.log().count(text)

        workers = cp_a.worker_pids()
        assert len(workers) == 1
        assert set(federated(agent.endpoint)) == {A}
        assert status(cp_a)["federation"] == {}

        # Added: B's bundle reaches the Workload API, fetched from B's endpoint, no restart.
        configmap_update(mount, config_text(1, relationship(b_port, initial)))
        wait_until("A's workloads see B's bundle",
                   lambda: federated(agent.endpoint).get(B) == b_roots, logs)  # fmt: skip
        assert count(f"config {config}: federates-with applied: {B} added") == 1
        wait_until("A refreshed B's bundle from its endpoint", lambda: bool(
            status(cp_a)["federation"].get(B, {}).get("refreshed")), logs)  # fmt: skip
        in_force = status(cp_a)["federation"][B]
        assert in_force["bundle_endpoint_url"] == f"https://127.0.0.1:{b_port}/"
        assert in_force["endpoint_spiffe_id"] == endpoint_id(B)
        check = config_check(status(cp_a))
        assert check is not None
        assert check.ok, check
        wait_until("the metrics show B's bundle in force", lambda: metrics(metrics_port).get(
            f'{ROOTS}{{trust_domain="{B}"}}') == 1.0, logs)  # fmt: skip
        assert metrics(metrics_port)["meshward_ca_config_refused"] == 0.0

        # Bad edits: one line each naming file and line; B's bundle stays in force.
        refused = "config refused, keeping the last good settings: "
        bad_edits = [
            (config_text(1, relationship(b_port, initial)) + "  - [unclosed\n",
             re.escape(f"{config}:") + r"\d+: yaml: "),
            (config_text(1, relationship(b_port, initial, endpoint="spiffe://b.example/x y")),
             re.escape(f"{config}:7: federates-with.{B}.endpoint-spiffe-id: ")),
            ("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
             "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
             "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n",
             re.escape(f"{config}:") + r"\d+: yaml: .*(nodes|aliases)"),
        ]  # fmt: skip
        for n, (text, pattern) in enumerate(bad_edits, start=1):
            configmap_update(mount, text)
            wait_until(f"bad edit {n} refused", lambda n=n: count(refused) == n, logs)
            line = cp_a.log().split(refused)[-1].splitlines()[0]
            assert re.match(pattern, line), line
            assert status(cp_a)["config"]["error"].startswith(f"{config}:"), status(cp_a)
            assert federated(agent.endpoint).get(B) == b_roots
            assert B in status(cp_a)["federation"]
        assert "Traceback" not in cp_a.log()
        check = config_check(status(cp_a))
        assert check is not None
        assert not check.ok
        assert "edit refused" in check.detail
        assert metrics(metrics_port)["meshward_ca_config_refused"] == 1.0

        # A restart-only key changed: one line saying so; B stays, the workers are the same.
        configmap_update(mount, config_text(2, relationship(b_port, initial)))
        pending = f"config {config}: workers changed: takes effect when the CA restarts"
        wait_until("the restart-only change is logged", lambda: count(pending) == 1, logs)
        assert count(f"config {config}: valid again") == 1
        assert status(cp_a)["config"] == {
            "file": str(config), "error": "", "restart_pending": ["workers"],
        }  # fmt: skip
        assert cp_a.worker_pids() == workers
        assert federated(agent.endpoint).get(B) == b_roots
        assert count(f"{B} added") == 1  # the same relationship: not restarted
        check = config_check(status(cp_a))
        assert check is not None
        assert not check.ok
        assert "workers changed" in check.detail
        got = metrics(metrics_port)
        assert (got["meshward_ca_config_refused"], got["meshward_ca_config_restart_pending"]) == (
            0.0, 1.0,
        )  # fmt: skip

        # Removed: B's bundle leaves the Workload API and A's status.
        configmap_update(mount, config_text(2))
        wait_until("B's bundle leaves A's workloads",
                   lambda: set(federated(agent.endpoint)) == {A}, logs)  # fmt: skip
        assert count(f"config {config}: federates-with applied: {B} removed") == 1
        assert status(cp_a)["federation"] == {}
        assert not any(key.startswith(ROOTS) for key in metrics(metrics_port))
        assert count(pending) == 1  # the pending key is the same: not said again
        assert cp_a.worker_pids() == workers
        assert "federation with b.example ended" in agent.log()
        assert count(refused) == len(bad_edits)
