"""The CA's TLS offers AEAD suites only, as the sidecars do (issue 12 item 8): on TLS 1.2 a real
client offering nothing but ECDHE-ECDSA CBC suites is refused, on the listen port (Python's ssl
behind the front door), on the `--mtls-listen` port (rustls, in the native transport) and on the supervisor's
HTTPS ports (the SPIFFE bundle endpoint; the webhook shares its context); AEAD ones are taken."""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ca import wire
from tests.harness.control_plane import ControlPlane, free_port, run_control_plane

REGISTRY = "workloads: []\n"
# The four TLS 1.2 CBC suites for an ECDSA certificate (OpenSSL's names).
CBC_SUITES = (
    "ECDHE-ECDSA-AES128-SHA",
    "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-ECDSA-AES128-SHA256",
    "ECDHE-ECDSA-AES256-SHA384",
)
AEAD_SUITES = ("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384")
PORTS = ("listen", "mtls-listen", "bundle-endpoint-listen")


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    ports = (
        "--mtls-listen",
        f"127.0.0.1:{free_port()}",
        "--bundle-endpoint-listen",
        f"127.0.0.1:{free_port()}",
    )
    with run_control_plane(tmp_path_factory.mktemp("cp"), REGISTRY, extra_args=ports) as plane:
        yield plane


@pytest.fixture(scope="module")
def node_files(cp: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A node SVID (chain without its root, key 0600): the mTLS port wants a node certificate."""
    cred = wire.bootstrap(cp.address, cp.bundle_pem(), cp.join_token("node-1"))
    d = tmp_path_factory.mktemp("node")
    chain, key = d / "chain.pem", d / "key.pem"
    chain.write_text("".join(cred.chain_pem[:-1]))
    fd = os.open(key, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(wire.key_pem(cred.key))
    return chain, key


def port_of(cp: ControlPlane, which: str) -> int:
    if which == "listen":
        return cp.port
    args = cp.extra_args
    return int(args[args.index(f"--{which}") + 1].rpartition(":")[2])


def handshake(cp: ControlPlane, which: str, suite: str, node_files: tuple[Path, Path]) -> str:
    """A TLS 1.2 handshake offering `suite` alone, as a node agent (its SVID, the bundle); the
    suite agreed."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(suite)
    ctx.check_hostname = False  # the CA's identity is a URI SAN
    ctx.load_verify_locations(cadata=cp.bundle_pem().decode())
    ctx.load_cert_chain(*node_files)
    ctx.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port_of(cp, which)), timeout=30) as raw,
        ctx.wrap_socket(raw) as tls,
    ):
        agreed = tls.cipher()
        assert agreed is not None
        assert tls.version() == "TLSv1.2"
        return agreed[0]


@pytest.mark.parametrize("which", PORTS)
@pytest.mark.parametrize("suite", CBC_SUITES)
def test_a_client_offering_only_a_cbc_suite_is_refused(
    cp: ControlPlane, node_files: tuple[Path, Path], which: str, suite: str
) -> None:
    # No suite in common: the handshake ends (the servers close without an alert: an EOF).
    with pytest.raises(ssl.SSLError):
        handshake(cp, which, suite, node_files)


def test_a_client_offering_every_cbc_suite_is_refused(
    cp: ControlPlane, node_files: tuple[Path, Path]
) -> None:
    for which in PORTS:
        with pytest.raises(ssl.SSLError):
            handshake(cp, which, ":".join(CBC_SUITES), node_files)


@pytest.mark.parametrize("which", PORTS)
@pytest.mark.parametrize("suite", AEAD_SUITES)
def test_a_client_offering_an_aead_suite_is_served(
    cp: ControlPlane, node_files: tuple[Path, Path], which: str, suite: str
) -> None:
    assert handshake(cp, which, suite, node_files) == suite


def test_the_listen_port_also_takes_chacha20(
    cp: ControlPlane, node_files: tuple[Path, Path]
) -> None:
    # The sidecars' list: AES-GCM and ChaCha20-Poly1305 (grpcio's port offers AES-GCM only).
    suite = "ECDHE-ECDSA-CHACHA20-POLY1305"
    assert handshake(cp, "listen", suite, node_files) == suite
