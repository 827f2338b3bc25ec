"""The I/O behind `status`, `proxy-config secret` and `check`: read the running mesh over its wire
APIs (sidecar admin and health inside each pod, the control plane's TLS port, the CA's bundle file,
`meshward authz lint`) and hand what was read to the pure cores."""

from __future__ import annotations

import datetime as dt
import json
import socket
import ssl
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from ca.kube import REFUSED_FILE
from ca.publisher import STATUS_FILE
from meshward.inspect.admin import sidecar_certs, sidecar_ready
from meshward.inspect.checks import (
    CheckResult,
    check_sidecar_svid,
    check_signing_certs,
    config_check,
    federation_checks,
    kubernetes_policy_check,
    rotation_line,
    trust_bundle_check,
)
from meshward.inspect.secrets import SecretView, format_table, secret_view, split_certs
from meshward.mesh import components as cmd
from meshward.mesh.layout import StateLayout, load_options
from meshward.mesh.spec import MeshSpec, PodSpec, build_spec
from meshward.mesh.supervisor import Supervisor
from meshward_common.errors import ConfigError, MeshwardError, SvidError
from meshward_common.registry import load_registry
from meshward_common.spiffe_id import control_plane_id, workload_id
from meshward_common.svid import fingerprint_sha256, load_pem_chain, uri_sans

TLS_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class MeshView:
    spec: MeshSpec
    layout: StateLayout
    sup: Supervisor
    # On Kubernetes: the Pods as the API reports them ("namespace/name" -> Pod), or why not.
    kube_pods: dict[str, dict[str, Any]] | None = None
    kube_error: str = ""

    @classmethod
    def open(cls, state_dir: Path) -> MeshView:
        layout = StateLayout(state_dir)
        options = load_options(layout)
        if options is None:
            raise ConfigError(f"meshward: no mesh in {state_dir} (start one with `meshward up`)")
        sup = Supervisor(layout.run_dir, layout.logs)
        spec = build_spec(options)
        if not options.kubernetes:
            return cls(spec, layout, sup)
        from meshward.inspect.kube_view import api_pods
        from meshward.mesh.kube_launcher import overlay

        pods, error = api_pods(layout)
        return cls(overlay(spec, layout), layout, sup, pods, error)

    def bundle(self) -> list[x509.Certificate]:
        path = Path(cmd.trust_bundle(self.layout))
        try:
            return load_pem_chain(path.read_bytes())
        except (OSError, SvidError) as exc:
            raise ConfigError(f"{path}: no trust bundle: {exc}") from exc

    def ca_status(self) -> dict[str, Any] | None:
        """The CA's `ca-status.json` (roots, signer, root rotation), if it wrote one."""
        try:
            data: dict[str, Any] = json.loads((self.layout.ca_dir / STATUS_FILE).read_text())
        except (OSError, ValueError):
            return None
        return data

    def kubernetes_refused(self) -> dict[str, str] | None:
        return kubernetes_refused(self.layout.ca_dir)

    def expected_ids(self) -> dict[str, str]:
        if self.kube_pods is not None:
            td = self.spec.options.trust_domain
            return {
                p.name: str(workload_id(td, p.namespace, p.service_account)) for p in self.spec.pods
            }
        registry = load_registry(self.layout.registry)
        td = registry.trust_domain or self.spec.options.trust_domain
        return {w.name: str(w.spiffe_id(td)) for w in registry.workloads}


def kubernetes_refused(ca_dir: Path) -> dict[str, str] | None:
    """The policy objects a control plane on Kubernetes refused, or None if it watches no API
    (no such file) or the file cannot be read (the check then says nothing rather than guess)."""
    try:
        data = json.loads((ca_dir / REFUSED_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    return {str(k): str(v) for k, v in data.items()}


def pod_secret(view: MeshView, pod_name: str, now: dt.datetime) -> SecretView:
    pod = view.spec.pod(pod_name)
    chain, bundle = split_certs(sidecar_certs(pod.netns))
    return secret_view(pod.name, chain, bundle or view.bundle(), now)


def _running(view: MeshView, name: str) -> str:
    return "running" if view.sup.running(name) else "DOWN"


def status_table(view: MeshView, now: dt.datetime) -> str:
    """One table: control plane, node agents, and per pod its identity, expiry and readiness."""
    if view.kube_pods is not None:
        from meshward.inspect.kube_view import kube_status_table

        return kube_status_table(view, now)
    rows = [("NODE", "POD", "SPIFFE ID", "CERT EXPIRES", "READY", "PROCESSES")]
    cp = view.spec.options.control_plane_port
    rows.append(
        ("-", "control-plane", f"127.0.0.1:{cp}", "-", _running(view, "control-plane"), "-")
    )
    for node in view.spec.nodes:
        rows.append((node, "(node agent)", "-", "-", _running(view, f"agent-{node}"), "-"))
    for pod in sorted(view.spec.pods, key=lambda p: (p.node, p.name)):
        procs = ",".join(
            f"{kind}:{'up' if view.sup.running(f'{kind}-{pod.name}') else 'DOWN'}"
            for kind in ("sidecar", "app")
        )
        sid, expires = identity_cells(view, pod, now)
        ready = "true" if sidecar_ready(pod.netns) else "false"
        rows.append((pod.node, pod.name, sid, expires, ready, procs))
    ing = view.spec.ingress_node
    port = view.spec.options.ingress_port
    rows.append(
        (
            ing,
            "ingress",
            view.spec.ingress_id(),
            f"127.0.0.1:{port}",
            _running(view, "ingress"),
            "-",
        )
    )
    table = format_table(rows)
    rotation = (view.ca_status() or {}).get("rotation")
    return table + (f"\nroot rotation: {rotation_line(rotation)}" if rotation else "")


def identity_cells(view: MeshView, pod: PodSpec, now: dt.datetime) -> tuple[str, str]:
    """(SPIFFE ID, expiry) as the pod's sidecar answers, or the expected ID and why not."""
    try:
        secret = pod_secret(view, pod.name, now)
        sid, expires = secret.leaf.spiffe_id, _expiry(secret.leaf.not_after, now)
        if secret.problems:
            expires += " INVALID"
    except (MeshwardError, ValueError):
        # `meshward check` says why; the table only says that nothing was learnt.
        sid = view.expected_ids().get(pod.name, "?") + " (expected)"
        expires = "unknown (no answer)"
    return sid, expires


def _expiry(when: dt.datetime, now: dt.datetime) -> str:
    left = int((when - now).total_seconds())
    return f"{when:%H:%M:%SZ} (in {left // 3600}h{left % 3600 // 60}m{left % 60}s)"


def control_plane_check(view: MeshView, bundle: list[x509.Certificate]) -> CheckResult:
    """A TLS handshake to the control plane, verified against the trust bundle, and its ID."""
    port = view.spec.options.control_plane_port
    name = f"control plane is reachable (127.0.0.1:{port}, TLS verified against the bundle)"
    fix = "`meshward up` restarts it; see `meshward logs control-plane`"
    ctx = ssl.create_default_context(cafile=cmd.trust_bundle(view.layout))
    ctx.check_hostname = False  # SPIFFE IDs are URI SANs, checked below
    ctx.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=TLS_TIMEOUT_S) as raw,
            ctx.wrap_socket(raw) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as exc:
        return CheckResult("control-plane", name, False, f"{type(exc).__name__}: {exc}", fix)
    if der is None:
        return CheckResult("control-plane", name, False, "no server certificate", fix)
    uris = uri_sans(x509.load_der_x509_certificate(der))
    want = str(control_plane_id(view.spec.options.trust_domain))
    if uris and uris[0] != want:
        return CheckResult(
            "control-plane", name, False, f"server is {uris[0]}, expected {want}", fix
        )
    return CheckResult("control-plane", name, True, uris[0] if uris else "")


def policy_check(view: MeshView) -> CheckResult:
    files = sorted(p for p in view.layout.policies.glob("*.y*ml"))
    name = f"every policy file is valid ({len(files)} in {view.layout.policies})"
    if not files:
        return CheckResult("policy", name, True)
    done = subprocess.run(
        [sys.executable, "-m", "meshward", "authz", "lint", *map(str, files)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    detail = " | ".join(line for line in (done.stdout + done.stderr).splitlines() if line.strip())
    if done.returncode == 0:
        return CheckResult("policy", name, True)
    return CheckResult(
        "policy", name, False, detail[:400],
        "fix or remove the file named above; the mesh keeps enforcing the last valid set",
    )  # fmt: skip


def run_checks(view: MeshView, now: dt.datetime) -> list[CheckResult]:
    results: list[CheckResult] = []
    try:
        bundle = view.bundle()
    except ConfigError as exc:
        fix = "start the mesh with `meshward up`"
        return [CheckResult("control-plane", "trust bundle is readable", False, str(exc), fix)]
    results.append(control_plane_check(view, bundle))
    bundle_status = trust_bundle_check(view.ca_status())
    if bundle_status is not None:
        results.append(bundle_status)
    results += federation_checks(view.ca_status())
    config = config_check(view.ca_status())
    if config is not None:
        results.append(config)
    if view.kube_pods is not None:
        from meshward.inspect.kube_view import kube_process_checks

        results += kube_process_checks(view)
    for c in [] if view.kube_pods is not None else cmd.components(view.spec, jaeger=False):
        if c.kind in ("agent", "control-plane", "ingress"):
            ok = view.sup.running(c.name)
            results.append(
                CheckResult(
                    "processes", f"{c.name} is running", ok, "",
                    "" if ok else f"`meshward up` restarts it; see `meshward logs {c.name}`",
                )
            )  # fmt: skip
    intermediates: dict[bytes, x509.Certificate] = {}
    sidecar_results: list[CheckResult] = []
    ids = view.expected_ids()
    for pod in view.spec.pods:
        try:
            chain, _ = split_certs(sidecar_certs(pod.netns))
        except (MeshwardError, ValueError) as exc:
            fix = f"`meshward up` restarts it; see `meshward logs sidecar-{pod.name}`"
            name = f"{pod.name}: sidecar answers with its certificate"
            sidecar_results.append(CheckResult("sidecars", name, False, str(exc), fix))
            continue
        for cert in chain[1:]:
            intermediates[fingerprint_sha256(cert).encode()] = cert
        sidecar_results.append(
            check_sidecar_svid(pod.name, chain, bundle, ids.get(pod.name, ""), now)
        )
    roots = {fingerprint_sha256(c).encode() for c in bundle}
    signing = [c for fp, c in intermediates.items() if fp not in roots]
    results += check_signing_certs(bundle, signing, now)
    results += sidecar_results
    if view.kube_pods is None:  # on Kubernetes there is no policy directory, only the API
        results.append(policy_check(view))
    kube_policies = kubernetes_policy_check(view.kubernetes_refused())
    if kube_policies is not None:
        results.append(kube_policies)
    return results
