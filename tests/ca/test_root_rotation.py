"""Root rotation with no outage (self-signed mode): the schedule as a pure function, then
`meshward ca rotate-root` against a running `meshward ca serve`, step by step over the wire."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from ca.authority import make_root
from ca.issuer import SigningAuthority
from ca.rotation import SWITCH_PROPAGATION, RootRotation
from meshward_common.protos import meshward_discovery_pb2 as discovery_pb2
from meshward_common.svid import certificates_from_der, verify_x509_svid
from tests.ca import wire
from tests.harness.control_plane import REPO, ControlPlane, free_port, run_control_plane

TD = "cluster.local"
T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
MAX_TTL = dt.timedelta(hours=24)
NODE_TTL = 10  # seconds: the test's node renews before every use
REGISTRY = """workloads:
  - name: reviews-v1
    namespace: default
    serviceAccount: reviews
    node: node-1
"""


def test_the_schedule_adds_first_switches_after_the_grace_and_retires_after_max_ttl() -> None:
    old, old_key = make_root(TD, T0)
    new, new_key = make_root(TD, T0)
    rotation = RootRotation(
        SigningAuthority(old, old_key, (), (old,)),
        SigningAuthority(new, new_key, (), (new,)),
        T0,
        dt.timedelta(hours=1),
    )
    steps = [
        (T0, "prepared", old, (old, new)),
        (T0 + dt.timedelta(minutes=59), "prepared", old, (old, new)),
        (T0 + dt.timedelta(hours=1), "switched", new, (old, new)),
        (rotation.retire_at(MAX_TTL) - dt.timedelta(seconds=1), "switched", new, (old, new)),
        (rotation.retire_at(MAX_TTL), "done", new, (new,)),
    ]
    for now, phase, signer, roots in steps:
        assert rotation.phase(now, MAX_TTL) == phase, now
        authority = rotation.authority(now, MAX_TTL)
        assert (authority.cert, authority.roots) == (signer, roots), now
    assert rotation.retire_at(MAX_TTL) == T0 + dt.timedelta(hours=1) + SWITCH_PROPAGATION + MAX_TTL
    assert rotation.earlier_chains(T0, MAX_TTL) == ((old,),)
    assert rotation.earlier_chains(rotation.retire_at(MAX_TTL), MAX_TTL) == ()


def test_status_and_check_say_where_a_rotation_stands() -> None:
    from meshward.inspect.checks import trust_bundle_check

    steady = {"roots": [{"sha256": "ab" * 32}], "signer": {"sha256": "ab" * 32}, "rotation": None}
    result = trust_bundle_check(steady)
    assert result is not None
    assert (result.name, result.ok, result.detail) == (
        "trust bundle",
        True,
        f"1 root(s), signer {'ab' * 8}",
    )
    rotating = dict(
        steady,
        rotation={"phase": "switched", "new_root": "cd" * 32, "old_root": "ab" * 32,
                  "started": "T0", "switch_at": "T1", "retire_at": "T2"},
    )  # fmt: skip
    result = trust_bundle_check(rotating)
    assert result is not None
    assert result.name == "root rotation"
    assert result.detail == (
        f"switched: new root {'cd' * 8} trusted since T0, signs from T1; old root {'ab' * 8} "
        "leaves the bundle at T2"
    )
    assert trust_bundle_check(None) is None


def _rotate(cp: ControlPlane, grace: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshward", "ca", "rotate-root", "--state-dir", str(cp.state_dir),
         "--grace", grace],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def _status(cp: ControlPlane) -> dict:  # type: ignore[type-arg]
    return json.loads((cp.state_dir / "ca-status.json").read_text())


def _phase(cp: ControlPlane) -> str | None:
    rotation = _status(cp)["rotation"]
    return None if rotation is None else str(rotation["phase"])


def _wait(condition, timeout: float = 60.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return bool(condition())


class _Bundles:
    """The bundles one discovery stream delivered, in order (a node agent's view)."""

    def __init__(self, cp: ControlPlane, node: wire.Credential) -> None:
        self.seen: list[tuple[bytes, ...]] = []
        self._ch = wire.channel(cp.address, cp.bundle_pem(), node)
        stream = self._ch.unary_stream(
            "/meshward.v1.MeshDiscovery/StreamMeshState",
            request_serializer=discovery_pb2.MeshStateRequest.SerializeToString,
            response_deserializer=discovery_pb2.MeshState.FromString,
        )(discovery_pb2.MeshStateRequest())
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Iterator[discovery_pb2.MeshState]) -> None:
        try:
            for state in stream:
                roots = certificates_from_der(state.trust_bundles[TD])
                fps = tuple(r.fingerprint(r.signature_hash_algorithm) for r in roots)  # type: ignore[arg-type]
                if not self.seen or self.seen[-1] != fps:
                    self.seen.append(fps)
        except grpc.RpcError:
            return

    def close(self) -> None:
        self._ch.close()


def _fp(cert: x509.Certificate) -> bytes:
    return cert.fingerprint(cert.signature_hash_algorithm)  # type: ignore[arg-type]


class _Node:
    """A node agent's credential, renewed before each use (the TTLs here are seconds)."""

    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp
        self.credential = wire.bootstrap(
            cp.address, cp.bundle_pem(), cp.join_token("node-1"), ttl_seconds=NODE_TTL
        )

    def renew(self) -> wire.Credential:
        self.credential = wire.issue(
            self.cp.address, self.cp.bundle_pem(), self.credential, ttl_seconds=NODE_TTL
        )
        return self.credential

    def issued_root(self) -> x509.Certificate:
        """The root of a workload certificate issued now."""
        workload = wire.issue(
            self.cp.address,
            self.cp.bundle_pem(),
            self.renew(),
            impersonate=f"spiffe://{TD}/ns/default/sa/reviews",
        )
        return workload.chain[-1]


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[ControlPlane]:
    # Short TTLs: the old root may leave 10 s (+ the switch's propagation) after the switch.
    metrics = ("--metrics-listen", f"127.0.0.1:{free_port()}")
    with run_control_plane(
        tmp_path, REGISTRY, workload_ttl="2s", max_ttl="10s", extra_args=metrics
    ) as plane:
        yield plane


def _gauges(cp: ControlPlane) -> dict[str, float]:
    port = cp.extra_args[cp.extra_args.index("--metrics-listen") + 1]
    with urllib.request.urlopen(f"http://{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {
        f"{s.name}{{{','.join(f'{k}={v}' for k, v in sorted(s.labels.items()))}}}": s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith(("meshward_ca_root_rotation", "meshward_ca_trust_bundle"))
    }


def test_rotate_root_with_the_ca_running(cp: ControlPlane) -> None:
    old = x509.load_pem_x509_certificates(cp.bundle_pem())
    assert len(old) == 1
    node = _Node(cp)
    bundles = _Bundles(cp, node.credential)
    assert _wait(lambda: len(bundles.seen) == 1), "the stream carries the bundle from the start"
    assert bundles.seen[0] == (_fp(old[0]),)

    # A grace long enough for the checks of step 1 on a loaded machine.
    out = _rotate(cp, "15s")
    assert out.returncode == 0, out.stderr
    assert "root rotation started" in out.stdout

    # 1. The new root joins the bundle first; the CA still signs with the old key.
    assert _wait(lambda: len(x509.load_pem_x509_certificates(cp.bundle_pem())) == 2)
    new = next(r for r in x509.load_pem_x509_certificates(cp.bundle_pem()) if r != old[0])
    assert _wait(lambda: _phase(cp) == "prepared")  # the status file follows the bundle file
    assert node.issued_root() == old[0]
    gauges = _gauges(cp)
    assert gauges["meshward_ca_root_rotation_phase{phase=prepared}"] == 1
    assert gauges["meshward_ca_root_rotation_phase{phase=steady}"] == 0
    assert gauges["meshward_ca_trust_bundle_roots{}"] == 2
    again = _rotate(cp, "15s")
    assert again.returncode != 0
    assert "already in progress" in again.stderr
    # 2. After the grace period it signs with the new key (a node SVID the old root signed is
    #    still accepted for the renewal: its root is still in the bundle).
    assert _wait(lambda: node.renew() and _phase(cp) == "switched", timeout=90)
    assert _wait(lambda: node.issued_root() == new)
    renewed = node.renew()  # a node SVID of the new root
    assert verify_x509_svid(renewed.chain, [new], dt.datetime.now(dt.UTC)) is not None
    # 3. Once the last certificate the old key signed has expired, the old root leaves.
    #    Meanwhile the node keeps renewing, as an agent does well before expiry.
    assert _wait(lambda: node.renew() and _status(cp)["rotation"] is None, timeout=90)
    assert x509.load_pem_x509_certificates(cp.bundle_pem()) == [new]
    assert _gauges(cp)["meshward_ca_root_rotation_phase{phase=steady}"] == 1
    assert _wait(lambda: bundles.seen[-1] == (_fp(new),))
    # What the stream showed, in order: old; old and new; new.
    assert bundles.seen == [(_fp(old[0]),), (_fp(old[0]), _fp(new)), (_fp(new),)]
    assert node.issued_root() == new, "a node renewed under the new root is served"
    bundles.close()
    assert "root rotation: switched" in cp.log()
    assert "root rotation: done" in cp.log()


def _replace_plugin_files(src: Path, dst: Path) -> None:
    """As an operator (or a Secret's update) does: every file replaced, one at a time."""
    import os

    for name in ("ca-key.pem", "ca-cert.pem", "cert-chain.pem", "root-cert.pem"):
        tmp = dst / f".{name}.tmp"
        tmp.write_bytes((src / name).read_bytes())
        os.chmod(tmp, (src / name).stat().st_mode & 0o777)
        os.replace(tmp, dst / name)


def test_a_changed_set_of_plugin_files_rotates_the_root_with_no_restart(tmp_path: Path) -> None:
    import shutil

    from ca.dev_certs import write_dev_certs

    now = dt.datetime.now(dt.UTC)
    write_dev_certs(tmp_path / "one", TD, "cluster1", now)
    write_dev_certs(tmp_path / "two", TD, "cluster1", now)  # another root, another intermediate
    live = tmp_path / "cacerts"
    shutil.copytree(tmp_path / "one" / "cluster1", live)
    old = x509.load_pem_x509_certificate((live / "root-cert.pem").read_bytes())
    new = x509.load_pem_x509_certificate(
        (tmp_path / "two" / "cluster1" / "root-cert.pem").read_bytes()
    )
    grace = ("--root-rotation-grace", "15s")  # long enough to see "trusted, not yet signing"
    with run_control_plane(
        tmp_path, REGISTRY, workload_ttl="2s", max_ttl="10s", plugin_ca_dir=live, extra_args=grace
    ) as cp:
        node = _Node(cp)
        assert node.issued_root() == old
        # A half-written set (the key of the new one, the certificate of the old) is refused.
        (live / "ca-key.pem").write_bytes(
            (tmp_path / "two" / "cluster1" / "ca-key.pem").read_bytes()
        )
        assert _wait(lambda: "plug-in CA files refused" in cp.log())
        assert node.issued_root() == old, "the CA keeps signing as before"
        _replace_plugin_files(tmp_path / "two" / "cluster1", live)
        assert _wait(lambda: len(x509.load_pem_x509_certificates(cp.bundle_pem())) == 2)
        assert node.issued_root() == old, "trusted first, not yet signing"
        assert _wait(lambda: node.issued_root() == new)
        assert _wait(lambda: node.renew() and _status(cp)["rotation"] is None, timeout=90)
        assert x509.load_pem_x509_certificates(cp.bundle_pem()) == [new]
        assert node.issued_root() == new
