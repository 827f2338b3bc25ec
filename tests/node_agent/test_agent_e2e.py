"""The agent as a process against the real control plane: SPIFFE clients, rotation, outages, restart."""

from __future__ import annotations

import datetime as dt
import os
import time
import urllib.request

import pytest
from spiffe import WorkloadApiClient, X509Source

from meshward_common.svid import load_pem_chain, verify_x509_svid
from tests.harness.control_plane import free_port, run_control_plane
from tests.harness.node_agent import run_node_agent

MY_ID = "spiffe://cluster.local/ns/default/sa/tester"
REGISTRY = f"""
workloads:
  - name: tester
    namespace: default
    serviceAccount: tester
    node: node-1
    selector: {{netns: host, uids: [{os.getuid()}]}}
  - name: elsewhere
    namespace: default
    serviceAccount: elsewhere
    node: node-2
    selector: {{netns: host, uids: [{os.getuid()}]}}
"""


pytestmark = pytest.mark.slow


def wait_until(predicate, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def control_plane(tmp_path):
    with run_control_plane(tmp_path, REGISTRY, workload_ttl="4s") as cp:
        yield cp


def serial(source):
    return source.get_x509_context().default_svid.leaf.serial_number


def assert_valid(svid, bundle_path):
    roots = load_pem_chain(bundle_path.read_bytes())
    now = svid.leaf.not_valid_before_utc + dt.timedelta(seconds=2)
    assert str(verify_x509_svid(list(svid.cert_chain), roots, now)) == MY_ID
    assert svid.leaf.public_key() == svid.private_key.public_key()


def metric(port, name, **labels):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_x509_source_gets_svid_and_rotations_from_the_control_plane(tmp_path, control_plane):
    port = free_port()
    metrics_flag = ("--metrics-listen", f"127.0.0.1:{port}")
    with run_node_agent(
        tmp_path, control_plane, workload_ttl="4s", extra_args=metrics_flag
    ) as agent:
        source = X509Source(socket_path=agent.endpoint, timeout_in_seconds=20)
        seen = []
        source.subscribe_for_updates(lambda: seen.append(source.get_x509_context().default_svid))
        try:
            first = source.get_x509_context().default_svid
            assert str(first.spiffe_id) == MY_ID
            assert_valid(first, control_plane.bundle_path)
            wait_until(lambda: len({s.leaf.serial_number for s in seen} - {first.leaf.serial_number}) >= 2,
                       20, "two rotations")  # fmt: skip
            for svid in list(seen):
                assert_valid(svid, control_plane.bundle_path)
            assert not source.is_closed()
            rotations = "meshward_agent_svid_rotations_total"
            assert metric(port, rotations, kind="workload", result="ok") >= 3
            assert metric(port, "meshward_agent_workload_api_streams", stream="x509_svid") == 1
        finally:
            source.close()
        with WorkloadApiClient(socket_path=agent.endpoint) as client:
            [bundle] = list(client.fetch_x509_bundles(timeout=10).bundles)
        assert list(bundle.x509_authorities) == load_pem_chain(control_plane.bundle_pem())
        state = agent.state_dir
        assert (state / "node-key.pem").stat().st_mode & 0o777 == 0o600
        assert (state / "node-cert.pem").stat().st_mode & 0o777 == 0o600
        assert "BEGIN" not in agent.log()  # no key (or any PEM) in the log


def test_ca_outage_keeps_current_svid_and_rotation_resumes(tmp_path):
    with (
        run_control_plane(tmp_path, REGISTRY, workload_ttl="10s") as control_plane,
        run_node_agent(tmp_path, control_plane, workload_ttl="10s") as agent,
    ):
        source = X509Source(socket_path=agent.endpoint, timeout_in_seconds=20)
        try:
            first = source.get_x509_context().default_svid
            held = first.leaf.serial_number
            control_plane.stop()
            # Renewal is due at 50% +- 10% of the lifetime; wait until past 65%, before expiry.
            past_renewal = first.leaf.not_valid_after_utc - dt.timedelta(seconds=3.5)
            wait_until(lambda: dt.datetime.now(dt.UTC) > past_renewal, 15, "the renewal point")
            wait_until(lambda: "not renewed" in agent.log(), 5, "a failed renewal")
            assert serial(source) == held
            assert not source.is_closed()
            # a client that connects during the outage gets the same, still valid SVID
            with WorkloadApiClient(socket_path=agent.endpoint) as client:
                assert client.fetch_x509_svid(timeout=3).leaf.serial_number == held
            control_plane.start()
            wait_until(lambda: serial(source) != held, 25, "rotation once the CA is back")
            assert_valid(source.get_x509_context().default_svid, control_plane.bundle_path)
        finally:
            source.close()


def test_agent_restart_clients_recover_by_themselves(tmp_path):
    # A 1h TTL: no rotation during the test, so a new SVID can only come from the restarted agent
    # (workload keys live in memory only, so it issues a new one).
    with (
        run_control_plane(tmp_path, REGISTRY, workload_ttl="1h") as control_plane,
        run_node_agent(tmp_path, control_plane, workload_ttl="1h") as agent,
    ):
        source = X509Source(socket_path=agent.endpoint, timeout_in_seconds=20)
        try:
            before = serial(source)
            agent.stop()
            assert not agent.socket_path.exists()  # clean shutdown removes the socket
            agent.start()  # same state dir: no new join token needed
            wait_until(lambda: serial(source) != before, 25, "SVID after the agent restarted")
            assert not source.is_closed()
            assert str(source.get_x509_context().default_svid.spiffe_id) == MY_ID
            # and after a crash (SIGKILL leaves the socket file behind; the new agent replaces it)
            after_restart = serial(source)
            agent.kill()
            assert agent.socket_path.exists()
            agent.start()
            wait_until(lambda: serial(source) != after_restart, 25, "SVID after a crash")
            assert not source.is_closed()
        finally:
            source.close()


def test_node_svid_is_renewed_over_mtls_at_half_life(tmp_path):
    # The CA caps every certificate at 4s here, so the node SVID itself rotates during the test.
    with (
        run_control_plane(tmp_path, REGISTRY, workload_ttl="4s", max_ttl="4s") as control_plane,
        run_node_agent(tmp_path, control_plane, workload_ttl="4s") as agent,
    ):
        cert_path = agent.state_dir / "node-cert.pem"
        first = load_pem_chain(cert_path.read_bytes())[0]
        wait_until(
            lambda: load_pem_chain(cert_path.read_bytes())[0].serial_number != first.serial_number,
            15, "a renewed node SVID on disk",
        )  # fmt: skip
        renewed = load_pem_chain(cert_path.read_bytes())[0]
        assert renewed.subject == first.subject
        assert renewed.public_key() == first.public_key()  # same node key, new certificate
        assert cert_path.stat().st_mode & 0o777 == 0o600
        # the agent writes the certificate, then logs: the line may trail the file a little
        wait_until(lambda: "node SVID renewed" in agent.log(), 5, "the renewal logged")
        # and workloads still get SVIDs with the renewed node credential
        source = X509Source(socket_path=agent.endpoint, timeout_in_seconds=20)
        try:
            assert str(source.get_x509_context().default_svid.spiffe_id) == MY_ID
        finally:
            source.close()


def test_a_root_rotation_reaches_an_unmodified_spiffe_client_with_no_outage(tmp_path):
    """`meshward ca rotate-root` with the agent and an X509Source running: the source sees the
    new root join its bundle, then SVIDs of the new root, then the old root leave; it never
    closes and always holds a valid SVID that chains to a root in its bundle."""
    import subprocess
    import sys

    from spiffe import TrustDomain

    from tests.harness.control_plane import REPO

    td = TrustDomain("cluster.local")
    with (
        run_control_plane(tmp_path, REGISTRY, workload_ttl="2s", max_ttl="6s") as control_plane,
        run_node_agent(tmp_path, control_plane, workload_ttl="2s") as agent,
    ):
        source = X509Source(socket_path=agent.endpoint, timeout_in_seconds=20)
        try:
            (old,) = source.get_bundle_for_trust_domain(td).x509_authorities
            seen_bundles = [{old}]
            bad = []

            def look():
                roots = set(source.get_bundle_for_trust_domain(td).x509_authorities)
                if roots != seen_bundles[-1]:
                    seen_bundles.append(roots)
                svid = source.get_x509_context().default_svid
                try:
                    verify_x509_svid(list(svid.cert_chain), list(roots), dt.datetime.now(dt.UTC))
                except Exception as exc:
                    bad.append(str(exc))

            out = subprocess.run(
                [sys.executable, "-m", "meshward", "ca", "rotate-root",
                 "--state-dir", str(control_plane.state_dir), "--grace", "2s"],
                cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert out.returncode == 0, out.stderr

            def rotated():
                look()
                return len(seen_bundles) >= 3 and len(seen_bundles[-1]) == 1

            wait_until(rotated, 90, "the old root to leave the source's bundle")
            assert not source.is_closed()
            new = next(iter(seen_bundles[-1]))
            assert new != old
            assert seen_bundles == [{old}, {old, new}, {new}]
            assert bad == [], "the source always held an SVID valid under its bundle"
            wait_until(
                lambda: source.get_x509_context().default_svid.cert_chain[-1].issuer == new.subject
                and verify_x509_svid(
                    list(source.get_x509_context().default_svid.cert_chain), [new],
                    dt.datetime.now(dt.UTC),
                ) is not None,
                20, "an SVID of the new root",
            )  # fmt: skip
            assert "trust bundle of cluster.local: 2 root(s)" in agent.log()
            assert "trust bundle of cluster.local: 1 root(s)" in agent.log()
        finally:
            source.close()
