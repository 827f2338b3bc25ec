"""The control plane over a real socket: `meshward ca serve` in a subprocess, real TLS, real gRPC."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca.authority import load_or_create_root, make_root
from ca.issuer import SigningAuthority, issue_svid
from meshward_common.protos import istio_ca_pb2, istio_ca_pb2_grpc
from meshward_common.protos import meshward_discovery_pb2 as discovery_pb2
from meshward_common.protos import meshward_discovery_pb2_grpc as discovery_pb2_grpc
from meshward_common.spiffe_id import SpiffeId
from meshward_common.svid import leaf_problems, signing_cert_problems, verify_x509_svid
from tests.ca import wire
from tests.harness.control_plane import ControlPlane, run_control_plane

TD = "cluster.local"
NODE1 = f"spiffe://{TD}/meshward/node/node-1"
REVIEWS = f"spiffe://{TD}/ns/default/sa/reviews"
RATINGS = f"spiffe://{TD}/ns/default/sa/ratings"
REGISTRY = """workloads:
  - name: reviews-v1
    namespace: default
    serviceAccount: reviews
    node: node-1
    address: 10.0.0.5
    selector: {netns: mw-reviews}
  - name: ratings-v1
    namespace: default
    serviceAccount: ratings
    node: node-2
"""
Code = grpc.StatusCode


def check_chain(cp: ControlPlane, chain_pem: list[str], identity: str) -> list[x509.Certificate]:
    """Every issued certificate is checked against every SVID rule and verified to the bundle."""
    chain = [x509.load_pem_x509_certificate(p.encode()) for p in chain_pem]
    roots = x509.load_pem_x509_certificates(cp.bundle_pem())
    assert leaf_problems(chain[0]) == []
    assert all(signing_cert_problems(c) == [] for c in chain[1:])
    assert chain[-1] in roots, "root last"
    assert verify_x509_svid(chain, roots, dt.datetime.now(dt.UTC)) == SpiffeId.parse(identity)
    return chain


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with run_control_plane(tmp_path_factory.mktemp("cp"), REGISTRY, max_ttl="48h") as plane:
        yield plane


@pytest.fixture(scope="module")
def node1(cp: ControlPlane) -> wire.Credential:
    return wire.bootstrap(cp.address, cp.bundle_pem(), cp.join_token("node-1"))


def audit_lines(cp: ControlPlane) -> list[dict[str, str]]:
    return [json.loads(line) for line in cp.audit_path.read_text().splitlines()]


def test_join_token_bootstrap_gives_the_node_svid_whatever_the_csr_asks(
    cp: ControlPlane, node1: wire.Credential
) -> None:
    chain = check_chain(cp, node1.chain_pem, NODE1)
    assert chain[0].public_key() == node1.key.public_key()


def test_renewal_over_mtls_and_workload_identity_on_own_node(
    cp: ControlPlane, node1: wire.Credential
) -> None:
    renewed = wire.issue(cp.address, cp.bundle_pem(), node1)
    check_chain(cp, renewed.chain_pem, NODE1)
    assert renewed.chain[0].serial_number != node1.chain[0].serial_number
    workload = wire.issue(cp.address, cp.bundle_pem(), renewed, impersonate=REVIEWS, ttl_seconds=60)
    leaf = check_chain(cp, workload.chain_pem, REVIEWS)[0]
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == dt.timedelta(seconds=120)


def test_server_certificate_is_the_control_plane_svid(cp: ControlPlane) -> None:
    import ssl

    ctx = ssl.create_default_context(cadata=cp.bundle_pem().decode())
    ctx.check_hostname = False
    ctx.set_alpn_protocols(["h2"])
    host, port = cp.address.rsplit(":", 1)
    import socket

    with socket.create_connection((host, int(port))) as raw, ctx.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
        assert tls.selected_alpn_protocol() == "h2"
    assert der is not None
    cert = x509.load_der_x509_certificate(der)
    assert leaf_problems(cert) == []
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        f"spiffe://{TD}/meshward/control-plane"
    ]
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "meshward-control-plane"}


def refused(
    cp: ControlPlane, credential: wire.Credential | None = None, **kwargs: object
) -> grpc.RpcError:
    csr = kwargs.pop("csr", None) or wire.make_csr()
    with wire.channel(cp.address, cp.bundle_pem(), credential) as ch:
        return wire.rpc_error(wire.create_certificate, ch, csr, **kwargs)


def test_no_credential_is_unauthenticated(cp: ControlPlane) -> None:
    err = refused(cp)
    assert err.code() == Code.UNAUTHENTICATED
    assert "no credential" in err.details()


def test_malformed_authorization_header_is_unauthenticated(cp: ControlPlane) -> None:
    with wire.channel(cp.address, cp.bundle_pem()) as ch:

        def stub_call() -> object:
            return istio_ca_pb2_grpc.IstioCertificateServiceStub(ch).CreateCertificate(
                istio_ca_pb2.IstioCertificateRequest(csr=wire.make_csr()),
                metadata=(("authorization", "Basic abc"),),
                timeout=10,
            )

        err = wire.rpc_error(stub_call)
    assert err.code() == Code.UNAUTHENTICATED
    assert "Bearer" in err.details()


def test_reused_token_is_unauthenticated(cp: ControlPlane) -> None:
    token = cp.join_token("node-3")
    wire.bootstrap(cp.address, cp.bundle_pem(), token)
    err = refused(cp, token=token)
    assert err.code() == Code.UNAUTHENTICATED
    assert "already used" in err.details()


def test_unknown_token_is_unauthenticated(cp: ControlPlane) -> None:
    err = refused(cp, token="not-a-token")
    assert err.code() == Code.UNAUTHENTICATED
    assert "not known" in err.details()


def test_expired_token_is_unauthenticated(cp: ControlPlane) -> None:
    token = cp.join_token("node-4", ttl="1s")
    time.sleep(1.2)
    err = refused(cp, token=token)
    assert err.code() == Code.UNAUTHENTICATED
    assert "expired" in err.details()


def test_token_for_another_node_cannot_obtain_that_nodes_identity(cp: ControlPlane) -> None:
    token = cp.join_token("node-2")
    err = refused(cp, token=token, impersonate=NODE1)
    assert err.code() == Code.PERMISSION_DENIED
    assert "node-2" in err.details()
    # Nor a workload identity, not even one registered on its own node.
    err = refused(cp, token=token, impersonate=RATINGS)
    assert err.code() == Code.PERMISSION_DENIED
    assert "join token only obtains" in err.details()
    # The refused requests did not use the token up: it still bootstraps node-2.
    cred = wire.bootstrap(cp.address, cp.bundle_pem(), token)
    check_chain(cp, cred.chain_pem, f"spiffe://{TD}/meshward/node/node-2")


def test_node_asking_for_a_workload_on_another_node_is_denied_naming_no_other_node(
    cp: ControlPlane, node1: wire.Credential
) -> None:
    before = len(audit_lines(cp))
    err = refused(cp, node1, impersonate=RATINGS)
    assert err.code() == Code.PERMISSION_DENIED
    # The caller's answer: itself and what it asked for, not where ratings runs.
    assert err.details() == (
        f"node/node-1 (mtls) may not obtain {RATINGS}: no workload of that identity is "
        "registered on its node node-1"
    )
    assert "node-2" not in err.details()
    # The audit log keeps the whole story.
    (line,) = audit_lines(cp)[before:]
    assert (line["outcome"], line["caller"], line["identity"]) == (
        "refused", "node/node-1 (mtls)", RATINGS,
    )  # fmt: skip
    assert line["reason"] == f"PERMISSION_DENIED: {err.details()} (registered on node(s) node-2)"


def test_identity_not_in_registry_is_denied_as_one_elsewhere_is(
    cp: ControlPlane, node1: wire.Credential
) -> None:
    nobody = f"spiffe://{TD}/ns/default/sa/nobody"
    before = len(audit_lines(cp))
    err = refused(cp, node1, impersonate=nobody)
    assert err.code() == Code.PERMISSION_DENIED
    # The same answer as for an identity registered elsewhere: which identities exist is not
    # the caller's to learn.
    assert err.details() == (
        f"node/node-1 (mtls) may not obtain {nobody}: no workload of that identity is "
        "registered on its node node-1"
    )
    (line,) = audit_lines(cp)[before:]
    assert line["reason"] == f"PERMISSION_DENIED: {err.details()} (not in the registry)"


def test_workload_svid_cannot_call_the_ca(cp: ControlPlane, node1: wire.Credential) -> None:
    workload = wire.issue(cp.address, cp.bundle_pem(), node1, impersonate=REVIEWS)
    err = refused(cp, workload)
    assert err.code() == Code.PERMISSION_DENIED
    assert "not a node agent" in err.details()


def credential_signed_by(authority: SigningAuthority, identity: str) -> wire.Credential:
    """An SVID for `identity` from `authority`, with its own fresh key."""
    own_key = wire.new_key()
    chain = issue_svid(
        authority,
        own_key.public_key(),
        SpiffeId.parse(identity),
        dt.timedelta(hours=1),
        dt.datetime.now(dt.UTC),
    )
    return wire.Credential(
        own_key, [c.public_bytes(serialization.Encoding.PEM).decode() for c in chain]
    )


def forged_credential() -> wire.Credential:
    """A node SVID with the right name, issued by a different CA."""
    root, key = make_root(TD, dt.datetime.now(dt.UTC))
    return credential_signed_by(SigningAuthority(root, key, (), (root,)), NODE1)


def foreign_domain_credential(cp: ControlPlane) -> wire.Credential:
    """Signed by this CA's own root, so a TLS handshake takes it; but it names b.example."""
    ours = load_or_create_root(cp.state_dir, TD, dt.datetime.now(dt.UTC))
    return credential_signed_by(ours, "spiffe://b.example/meshward/node/node-1")


def test_client_certificate_from_another_ca_is_refused(cp: ControlPlane) -> None:
    before = len(audit_lines(cp))
    err = refused(cp, forged_credential())
    # Python's ssl verifies a presented client certificate during the handshake (as Go's
    # VerifyClientCertIfGiven does in istiod): the connection never reaches the servicer.
    assert err.code() == Code.UNAVAILABLE
    assert "failed to connect" in err.details()
    assert len(audit_lines(cp)) == before, "nothing was issued or even considered"


def test_a_node_certificate_naming_another_trust_domain_is_refused(cp: ControlPlane) -> None:
    # A chain is verified with the bundle of the trust domain it names: this CA has none for it.
    err = refused(cp, foreign_domain_credential(cp))
    assert err.code() == Code.UNAUTHENTICATED
    assert "no trust bundle for trust domain b.example" in err.details()


@pytest.mark.parametrize(
    ("csr", "message"),
    [
        ("not a csr", "not PEM"),
        (
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            "PKCS#10",
        ),
        ("-----BEGIN CERTIFICATE REQUEST-----\n" + "A" * 9000, "the limit is"),
    ],
    ids=["not-pem", "garbage", "oversized"],
)
def test_malformed_or_oversized_csr_is_invalid_argument(
    cp: ControlPlane, node1: wire.Credential, csr: str, message: str
) -> None:
    err = refused(cp, node1, csr=csr)
    assert err.code() == Code.INVALID_ARGUMENT
    assert message in err.details()


def test_oversized_request_is_refused_before_parsing(
    cp: ControlPlane, node1: wire.Credential
) -> None:
    err = refused(cp, node1, csr="x" * 200_000)
    assert err.code() == Code.RESOURCE_EXHAUSTED


def test_weak_key_csr_is_invalid_argument(cp: ControlPlane, node1: wire.Credential) -> None:
    err = refused(cp, node1, csr=wire.make_csr(wire.rsa_key(1024)))
    assert err.code() == Code.INVALID_ARGUMENT
    assert "RSA-1024" in err.details()


def test_rsa_2048_csr_is_accepted(cp: ControlPlane, node1: wire.Credential) -> None:
    cred = wire.issue(cp.address, cp.bundle_pem(), node1, key=wire.rsa_key(2048))
    check_chain(cp, cred.chain_pem, NODE1)


def test_ttl_above_max_is_invalid_argument(cp: ControlPlane, node1: wire.Credential) -> None:
    err = refused(cp, node1, ttl_seconds=48 * 3600 + 1)
    assert err.code() == Code.INVALID_ARGUMENT
    assert "exceeds the maximum of 172800s" in err.details()


def test_audit_log_has_one_line_per_issuance_and_refusal_and_no_secrets(
    cp: ControlPlane, node1: wire.Credential
) -> None:
    before = len(audit_lines(cp))
    cred = wire.issue(cp.address, cp.bundle_pem(), node1)
    refused(cp, node1, impersonate=RATINGS)
    lines = audit_lines(cp)[before:]
    assert len(lines) == 2
    ok, no = lines
    assert set(ok) == {"time", "caller", "identity", "serial", "not_after", "outcome", "reason"}
    assert (ok["outcome"], ok["caller"], ok["identity"]) == ("issued", "node/node-1 (mtls)", NODE1)
    assert int(ok["serial"], 16) == cred.chain[0].serial_number
    assert dt.datetime.fromisoformat(ok["not_after"]) == cred.chain[0].not_valid_after_utc
    assert (no["outcome"], no["identity"]) == ("refused", RATINGS)
    assert no["reason"].startswith("PERMISSION_DENIED")
    text = cp.audit_path.read_text()
    assert "PRIVATE KEY-----" not in text
    assert "-----BEGIN" not in text


def test_discovery_stream_sends_state_now_and_on_every_change(
    cp: ControlPlane, node1: wire.Credential
) -> None:
    with wire.channel(cp.address, cp.bundle_pem(), node1) as ch:
        stub = discovery_pb2_grpc.MeshDiscoveryStub(ch)
        stream = stub.StreamMeshState(discovery_pb2.MeshStateRequest(), timeout=30)
        first = next(stream)
        assert first.trust_domain == TD
        assert first.root_namespace == "istio-system"
        by_name = {w.name: w for w in first.workloads}
        assert by_name["reviews-v1"].spiffe_id == REVIEWS
        assert (by_name["reviews-v1"].netns, list(by_name["reviews-v1"].uids)) == (
            "mw-reviews",
            [1337],
        )
        assert by_name["ratings-v1"].netns == ""

        cp.write_registry(REGISTRY.replace("node: node-2", "node: node-1"))
        second = next(stream)
        assert second.version_info != first.version_info
        assert {w.node for w in second.workloads} == {"node-1"}
        # The CA authorizes against the reloaded registry too.
        workload = wire.issue(cp.address, cp.bundle_pem(), node1, impersonate=RATINGS)
        check_chain(cp, workload.chain_pem, RATINGS)

        cp.write_registry(REGISTRY)
        third = next(stream)
        assert {w.node for w in third.workloads} == {"node-1", "node-2"}
        stream.cancel()


def test_bad_registry_keeps_the_last_good_one_and_logs_its_line(
    cp: ControlPlane, node1: wire.Credential
) -> None:
    cp.write_registry("workloads:\n  - name: a\n    namespace: default\n")
    try:
        deadline = time.monotonic() + 60
        while "registry refused" not in cp.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "registry.yaml:2: workloads[0].serviceAccount: required" in cp.log()
        workload = wire.issue(cp.address, cp.bundle_pem(), node1, impersonate=REVIEWS)
        check_chain(cp, workload.chain_pem, REVIEWS)
    finally:  # the module's control plane goes on with the good registry, whatever happened
        cp.write_registry(REGISTRY)


def test_discovery_stream_requires_a_node_svid(cp: ControlPlane, node1: wire.Credential) -> None:
    with wire.channel(cp.address, cp.bundle_pem()) as ch:
        err = wire.rpc_error(lambda: next(wire.stream_states(ch)))
    assert err.code() == Code.UNAUTHENTICATED
    workload = wire.issue(cp.address, cp.bundle_pem(), node1, impersonate=REVIEWS)
    with wire.channel(cp.address, cp.bundle_pem(), workload) as ch:
        err = wire.rpc_error(lambda: next(wire.stream_states(ch)))
    assert err.code() == Code.PERMISSION_DENIED


def test_restart_keeps_root_port_and_node_identity(
    cp: ControlPlane, node1: wire.Credential
) -> None:
    bundle = cp.bundle_pem()
    cp.stop()
    assert not cp.running
    cp.start()
    assert cp.bundle_pem() == bundle
    renewed = wire.issue(cp.address, cp.bundle_pem(), node1)
    check_chain(cp, renewed.chain_pem, NODE1)


def test_rate_limit_answers_resource_exhausted(tmp_path: Path) -> None:
    with run_control_plane(
        tmp_path, REGISTRY, extra_args=("--rate-limit", "0.01", "--rate-burst", "2")
    ) as cp:
        node = wire.bootstrap(cp.address, cp.bundle_pem(), cp.join_token("node-1"))
        wire.issue(cp.address, cp.bundle_pem(), node)
        err = refused(cp, node)
        assert err.code() == Code.RESOURCE_EXHAUSTED
        assert "rate limit" in err.details()
        # Another node has its own bucket.
        wire.bootstrap(cp.address, cp.bundle_pem(), cp.join_token("node-2"))


def test_plugin_ca_serves_the_full_chain(tmp_path: Path) -> None:
    from ca.dev_certs import write_dev_certs

    write_dev_certs(tmp_path / "certs", TD, "cluster1", dt.datetime.now(dt.UTC))
    with run_control_plane(tmp_path, REGISTRY, plugin_ca_dir=tmp_path / "certs" / "cluster1") as cp:
        assert cp.bundle_pem() == (tmp_path / "certs" / "root-cert.pem").read_bytes()
        node = wire.bootstrap(cp.address, cp.bundle_pem(), cp.join_token("node-1"))
        chain = check_chain(cp, node.chain_pem, NODE1)
        inter = x509.load_pem_x509_certificate(
            (tmp_path / "certs/cluster1/ca-cert.pem").read_bytes()
        )
        assert len(chain) == 3
        assert chain[1] == inter
        renewed = wire.issue(cp.address, cp.bundle_pem(), node)  # mTLS through the intermediate
        check_chain(cp, renewed.chain_pem, NODE1)
        result = subprocess.run(
            ["openssl", "verify", "-CAfile", str(cp.bundle_path), "-untrusted",
             str(tmp_path / "certs/cluster1/ca-cert.pem"), "/dev/stdin"],
            input=renewed.chain_pem[0], capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr


def test_serve_refuses_bad_config_with_a_clear_error(tmp_path: Path) -> None:
    import sys

    (tmp_path / "plugin").mkdir()
    (tmp_path / "plugin" / "ca-cert.pem").write_text("")
    runs = {
        "incomplete plug-in CA, missing ca-key.pem": ["--plugin-ca-dir", str(tmp_path / "plugin")],
        "max-ttl: 'soon' is not a duration": ["--max-ttl", "soon"],
        "registry: /nope.yaml is not a file": ["--registry", "/nope.yaml"],
    }
    for message, args in runs.items():
        out = subprocess.run(
            [sys.executable, "-m", "meshward", "ca", "serve", "--listen", "127.0.0.1:0",
             "--state-dir", str(tmp_path / "state"), *args],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert out.returncode != 0
        assert message in out.stderr, out.stderr


POLICY = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-productpage
  namespace: default
spec:
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/productpage"]
"""


def test_policy_files_are_streamed_and_a_bad_one_keeps_the_last_good_set(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "allow.yaml").write_text(POLICY)
    with run_control_plane(tmp_path, REGISTRY, policy_dir=policies) as cp:
        node = wire.bootstrap(cp.address, cp.bundle_pem(), cp.join_token("node-1"))
        with wire.channel(cp.address, cp.bundle_pem(), node) as ch:
            stub = discovery_pb2_grpc.MeshDiscoveryStub(ch)
            stream = stub.StreamMeshState(discovery_pb2.MeshStateRequest(), timeout=30)
            first = next(stream)
            assert [(p.source, p.yaml) for p in first.policies] == [("allow.yaml", POLICY)]

            # A broken edit: refused with its file and line, the last good version stays.
            (policies / "allow.yaml").write_text(POLICY.replace("action: ALLOW", "action: MAYBE"))
            (policies / "deny.yaml").write_text(POLICY.replace("ALLOW", "DENY"))
            second = next(stream)
            assert [(p.source, p.yaml) for p in second.policies] == [
                ("allow.yaml", POLICY),
                ("deny.yaml", POLICY.replace("ALLOW", "DENY")),
            ]
            assert "policy refused, keeping the last good version" in cp.log()
            assert "allow.yaml:" in cp.log()

            (policies / "deny.yaml").unlink()
            third = next(stream)
            assert [p.source for p in third.policies] == ["allow.yaml"]
            # A client that already holds the current version gets nothing until a change.
            stream.cancel()
            again = stub.StreamMeshState(
                discovery_pb2.MeshStateRequest(version_info=third.version_info), timeout=30
            )
            (policies / "allow.yaml").write_text(POLICY.replace("productpage", "reviews"))
            fourth = next(again)
            assert fourth.version_info != third.version_info
            assert "sa/reviews" in fourth.policies[0].yaml
            again.cancel()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (42, "must be a string SPIFFE ID"),
        ("spiffe://cluster.local/ns//sa/x", "ImpersonatedIdentity"),
    ],
    ids=["number", "malformed-id"],
)
def test_malformed_impersonated_identity_is_invalid_argument(
    cp: ControlPlane, node1: wire.Credential, value: float | str, message: str
) -> None:
    from google.protobuf import struct_pb2

    meta = struct_pb2.Struct()
    meta.update({"ImpersonatedIdentity": value})
    with wire.channel(cp.address, cp.bundle_pem(), node1) as ch:
        stub = istio_ca_pb2_grpc.IstioCertificateServiceStub(ch)
        request = istio_ca_pb2.IstioCertificateRequest(csr=wire.make_csr(), metadata=meta)
        err = wire.rpc_error(stub.CreateCertificate, request, timeout=10)
    assert err.code() == Code.INVALID_ARGUMENT
    assert message in err.details()


def test_metrics_count_issued_and_refused_csrs(tmp_path: Path) -> None:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from tests.harness.control_plane import free_port

    port = free_port()
    with run_control_plane(
        tmp_path, REGISTRY, extra_args=("--metrics-listen", f"127.0.0.1:{port}")
    ) as cp:
        node = wire.bootstrap(cp.address, cp.bundle_pem(), cp.join_token("node-1"))
        wire.issue(cp.address, cp.bundle_pem(), node, impersonate=REVIEWS)
        refused(cp, node, impersonate=RATINGS)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    got = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    assert got[("meshward_ca_certificates_issued_total", (("kind", "node"),))] == 1
    assert got[("meshward_ca_certificates_issued_total", (("kind", "workload"),))] == 1
    denied = (("kind", "workload"), ("reason", "permission_denied"))
    assert got[("meshward_ca_certificates_refused_total", denied)] == 1
