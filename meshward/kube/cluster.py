"""A real Kubernetes control plane on loopback: etcd + kube-apiserver (+ controllers on request).

For the tests (one per session) and for users trying meshward on Kubernetes locally
(`meshward kube cluster up`). Everything lives under one directory:

    pki/ca.crt, ca.key                   the cluster CA (client and serving certificates)
    pki/apiserver.crt, apiserver.key     serving cert: 127.0.0.1, localhost, kubernetes.default.svc
    pki/admin.crt, admin.key             client cert in system:masters (the kubeconfig's user)
    pki/sa.key, sa.pub                   the service-account token signing key pair
    admin.kubeconfig                     for kubectl, the `kubernetes` client and `--kubeconfig`
    etcd/                                etcd's data
    logs/<binary>.log                    each process's output

etcd listens on plain HTTP on 127.0.0.1 only (nothing but the API server talks to it); the API
server on HTTPS with RBAC on. Ports are picked below 32768 (the ephemeral range is where the
kernel hands out source ports, and a pinned port there can be taken by any outgoing connection).
The binaries come from `scripts/build_kube.sh` (cached outside the repository).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import random
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshward_common.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "scripts" / "build_kube.sh"
KUBE_VERSION = "v1.37.2"
BINARIES = ("kube-apiserver", "etcd", "kube-controller-manager", "kube-scheduler", "kubectl")
SERVICE_CIDR = "10.96.0.0/16"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
PORT_RANGE = (20000, 32000)  # below the ephemeral range (32768-60999)
START_ATTEMPTS = 3
_KEY_BITS = 2048


def kube_bin_dir(version: str = KUBE_VERSION) -> Path:
    """The directory holding the five binaries, building them first if needed (minutes, once)."""
    try:
        out = subprocess.run(
            ["bash", str(BUILD_SCRIPT), version], check=True, stdout=subprocess.PIPE, text=True
        )
    except subprocess.CalledProcessError as exc:
        raise ConfigError(f"{BUILD_SCRIPT} failed (exit {exc.returncode}); see its output") from exc
    return Path(out.stdout.strip().splitlines()[-1])


# -- certificates ------------------------------------------------------------------------------


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=_KEY_BITS)


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _issue(
    subject: x509.Name,
    key: rsa.RSAPrivateKey,
    issuer: tuple[x509.Certificate, rsa.RSAPrivateKey] | None,
    now: dt.datetime,
    *,
    server_names: tuple[str, ...] = (),
    server_ips: tuple[str, ...] = (),
) -> x509.Certificate:
    ca = issuer is None
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if issuer is None else issuer[0].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                key_encipherment=not ca,
                key_cert_sign=ca,
                crl_sign=ca,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if not ca:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server_names else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server_names or server_ips:
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in server_names]
        sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in server_ips]
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    signer = key if issuer is None else issuer[1]
    return builder.sign(signer, hashes.SHA256())


def write_pki(pki: Path, now: dt.datetime) -> None:
    """The cluster CA, the API server's serving cert, an admin client cert, the SA key pair."""
    pki.mkdir(parents=True, exist_ok=True)
    os.chmod(pki, 0o700)
    ca_key = _key()
    ca_cert = _issue(_name("meshward-local-kubernetes-ca"), ca_key, None, now)
    server_key, admin_key, sa_key = _key(), _key(), _key()
    server = _issue(
        _name("kube-apiserver"), server_key, (ca_cert, ca_key), now,
        server_names=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                      "kubernetes.default.svc.cluster.local"),
        server_ips=("127.0.0.1", "10.96.0.1"),
    )  # fmt: skip
    admin = _issue(_name("meshward-admin", "system:masters"), admin_key, (ca_cert, ca_key), now)
    pem = serialization.Encoding.PEM
    for name, cert, key in (
        ("ca", ca_cert, ca_key),
        ("apiserver", server, server_key),
        ("admin", admin, admin_key),
    ):
        (pki / f"{name}.crt").write_bytes(cert.public_bytes(pem))
        _write_key(pki / f"{name}.key", key)
    _write_key(pki / "sa.key", sa_key)
    (pki / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def kubeconfig_text(server: str, pki: Path, user: str = "meshward-admin") -> str:
    """A kubeconfig that names the certificate files (no key material inside it)."""
    return (
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: meshward-local\n  cluster:\n    server: {server}\n"
        f"    certificate-authority: {pki / 'ca.crt'}\n"
        f"users:\n- name: {user}\n  user:\n"
        f"    client-certificate: {pki / 'admin.crt'}\n    client-key: {pki / 'admin.key'}\n"
        f"contexts:\n- name: meshward-local\n  context:\n    cluster: meshward-local\n"
        f"    user: {user}\n"
        "current-context: meshward-local\n"
    )


# -- ports and processes -----------------------------------------------------------------------


def free_ports(count: int, rng: random.Random | None = None) -> list[int]:
    """`count` distinct ports in PORT_RANGE that nothing on 127.0.0.1 listens on right now."""
    pick = rng or random.SystemRandom()
    found: list[int] = []
    while len(found) < count:
        port = pick.randrange(*PORT_RANGE)
        if port in found:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        found.append(port)
    return found


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def _spawn(name: str, argv: list[str], logs: Path) -> _Proc:
    log = logs / f"{name}.log"
    with log.open("ab") as out:
        popen = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    return _Proc(name, popen, log)


def _stop(proc: _Proc, timeout: float = 15.0) -> None:
    if proc.popen.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.popen.pid, signal.SIGTERM)
    try:
        proc.popen.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.popen.pid, signal.SIGKILL)
        proc.popen.wait(timeout)


@dataclass
class LocalCluster:
    """etcd and kube-apiserver under `root`; `start()` returns once /readyz answers ok."""

    root: Path
    bin_dir: Path
    controllers: bool = False  # kube-controller-manager + kube-scheduler (Deployments, namespaces)
    etcd_port: int = 0
    peer_port: int = 0
    api_port: int = 0
    _procs: dict[str, _Proc] = field(default_factory=dict)

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "admin.kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def start(self, timeout: float = 120.0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        if not (self.pki / "sa.key").exists():
            write_pki(self.pki, dt.datetime.now(dt.UTC))
        last = ""
        for _attempt in range(START_ATTEMPTS):
            if not self.api_port:
                self.etcd_port, self.peer_port, self.api_port = free_ports(3)
            self.kubeconfig.write_text(kubeconfig_text(self.server, self.pki))
            try:
                self._start_etcd(timeout)
                self._start_apiserver(timeout)
                if self.controllers:
                    self._start_controllers()
                return
            except _PortTaken as exc:  # lost a race for a port: new ports, try again
                last = str(exc)
                self.stop()
                self.api_port = 0
        raise ConfigError(f"local cluster: could not start after {START_ATTEMPTS} tries: {last}")

    def _start_etcd(self, timeout: float) -> None:
        client = f"http://127.0.0.1:{self.etcd_port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        self._procs["etcd"] = _spawn(
            "etcd",
            [
                str(self.bin_dir / "etcd"), "--name=meshward", f"--data-dir={self.root / 'etcd'}",
                f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=meshward={peer}", "--log-level=warn",
                "--unsafe-no-fsync",  # a disposable test/dev store: durability buys nothing
            ],
            self.logs,
        )  # fmt: skip
        self._wait("etcd", f"{client}/health", timeout, tls=False)

    def apiserver_argv(self) -> list[str]:
        pki = self.pki
        return [
            str(self.bin_dir / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            "--endpoint-reconciler-type=none",  # no kubernetes Endpoints for a loopback address
            f"--secure-port={self.api_port}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--service-account-issuer={SA_ISSUER}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-account-extend-token-expiration=false",  # expiry means expiry
            "--authorization-mode=RBAC",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",  # the interception init container needs NET_ADMIN
            "--profiling=false",
            "--v=1",
        ]  # fmt: skip

    def _start_apiserver(self, timeout: float) -> None:
        self._procs["kube-apiserver"] = _spawn("kube-apiserver", self.apiserver_argv(), self.logs)
        self._wait("kube-apiserver", f"{self.server}/readyz", timeout, tls=True)

    def _start_controllers(self) -> None:
        kc = str(self.kubeconfig)
        self._procs["kube-controller-manager"] = _spawn(
            "kube-controller-manager",
            [
                str(self.bin_dir / "kube-controller-manager"), f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
                "--bind-address=127.0.0.1", "--secure-port=0", "--leader-elect=false",
                "--use-service-account-credentials=false",
                f"--service-account-private-key-file={self.pki / 'sa.key'}",
                f"--root-ca-file={self.pki / 'ca.crt'}",
                "--controllers=*,-nodeipam,-nodelifecycle,-persistentvolume-binder,-attachdetach",
            ],
            self.logs,
        )  # fmt: skip
        self._procs["kube-scheduler"] = _spawn(
            "kube-scheduler",
            [
                str(self.bin_dir / "kube-scheduler"), f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
                "--bind-address=127.0.0.1", "--secure-port=0", "--leader-elect=false",
            ],
            self.logs,
        )  # fmt: skip

    def _ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return ctx

    def _wait(self, name: str, url: str, timeout: float, *, tls: bool) -> None:
        proc = self._procs[name]
        ctx = self._ssl() if tls else None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                log = proc.tail()
                if "address already in use" in log:
                    raise _PortTaken(f"{name}: address already in use")
                raise ConfigError(f"{name} exited with {proc.popen.returncode}:\n{log}")
            try:
                with urllib.request.urlopen(url, timeout=2, context=ctx) as resp:  # noqa: S310
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise ConfigError(f"{name} not ready within {timeout:.0f}s at {url}:\n{proc.tail()}")

    def restart_apiserver(self, timeout: float = 120.0) -> None:
        """Stop the API server and start it again on the same port (watchers must catch up)."""
        _stop(self._procs.pop("kube-apiserver"))
        self._start_apiserver(timeout)

    def stop_apiserver(self) -> None:
        _stop(self._procs.pop("kube-apiserver"))

    def start_apiserver(self, timeout: float = 120.0) -> None:
        self._start_apiserver(timeout)

    def stop(self) -> None:
        for name in ("kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"):
            proc = self._procs.pop(name, None)
            if proc is not None:
                _stop(proc)


class _PortTaken(Exception):
    pass
