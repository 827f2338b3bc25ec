"""`meshward check` (as `linkerd check`): pure verdicts on what was read, each with a fix.

The I/O (TLS handshake, reading files, asking sidecars) is in `meshward.inspect.gather`; here every
check is a function of certificates, answers and `now`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from meshward.inspect.secrets import cert_info
from meshward_common.errors import SvidError
from meshward_common.svid import signing_cert_problems, verify_x509_svid

MIN_CA_VALIDITY = dt.timedelta(days=30)
# A sidecar rotates at half-life; below a quarter of its lifetime left, rotation has failed.
NEAR_EXPIRY_FRACTION = 0.25


# linkerd's marks.
OK_MARK = "\u221a"
FAIL_MARK = "\u00d7"


@dataclass(frozen=True)
class CheckResult:
    group: str
    name: str
    ok: bool
    detail: str = ""
    fix: str = ""


def check_signing_certs(
    roots: Sequence[x509.Certificate], intermediates: Sequence[x509.Certificate], now: dt.datetime
) -> list[CheckResult]:
    out: list[CheckResult] = []
    if not roots:
        return [
            CheckResult(
                "certificates", "trust bundle has roots", False, "the bundle is empty",
                "restart the control plane (`meshward up` restarts it) so it writes its bundle",
            )
        ]  # fmt: skip
    for kind, certs in (("root", roots), ("intermediate", intermediates)):
        for cert in certs:
            info = cert_info(cert)
            left = info.not_after - now
            problems = signing_cert_problems(cert)
            ok = left > MIN_CA_VALIDITY and now >= info.not_before and not problems
            detail = f"{info.subject} (serial {info.serial}) valid until {info.not_after:%Y-%m-%d}"
            if problems:
                detail += ": " + "; ".join(problems)
            out.append(
                CheckResult(
                    "certificates",
                    f"{kind} is valid for more than {MIN_CA_VALIDITY.days} days",
                    ok,
                    detail if ok else f"{detail}, {max(left.days, 0)} days left",
                    ""
                    if ok
                    else f"rotate the {kind}: add a new root to the bundle, then re-issue "
                    "(Istio's plug-in CA layout: ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem)",
                )
            )
    return out


def check_sidecar_svid(
    pod: str,
    chain: Sequence[x509.Certificate],
    bundle: Sequence[x509.Certificate],
    expected_id: str,
    now: dt.datetime,
) -> CheckResult:
    name = f"{pod}: certificate chains to the bundle and is not near expiry"
    fix = f"see `meshward logs sidecar-{pod}` and the node agent's log; `meshward up` restarts dead parts"
    try:
        sid = str(verify_x509_svid(chain, bundle, now))
    except SvidError as exc:
        return CheckResult("sidecars", name, False, "; ".join(exc.problems), fix)
    if expected_id and sid != expected_id:
        return CheckResult(
            "sidecars", name, False, f"holds {sid}, registry says {expected_id}", fix
        )
    leaf = cert_info(chain[0])
    lifetime = leaf.not_after - leaf.not_before
    left = leaf.not_after - now
    detail = f"{sid}, expires in {_human(left)}"
    if left < lifetime * NEAR_EXPIRY_FRACTION:
        return CheckResult("sidecars", name, False, detail + " (rotation overdue)", fix)
    return CheckResult("sidecars", name, True, detail)


def _human(delta: dt.timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds >= 86400:
        return f"{seconds // 86400}d{seconds % 86400 // 3600}h"
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60}m"
    return f"{seconds // 60}m{seconds % 60}s"


def render(results: Sequence[CheckResult]) -> str:
    lines: list[str] = []
    group = ""
    for r in results:
        if r.group != group:
            group = r.group
            lines += ([""] if lines else []) + [group, "-" * len(group)]
        mark = OK_MARK if r.ok else FAIL_MARK
        lines.append(f"{mark} {r.name}" + (f" [{r.detail}]" if r.detail else ""))
        if not r.ok and r.fix:
            lines.append(f"    fix: {r.fix}")
    failed = sum(not r.ok for r in results)
    lines.append("")
    lines.append(
        f"Status check results are {OK_MARK}"
        if not failed
        else f"{failed} check(s) failed {FAIL_MARK}"
    )
    return "\n".join(lines)


def trust_bundle_check(status: Mapping[str, Any] | None) -> CheckResult | None:
    """What the CA's `ca-status.json` says of its roots and of a root rotation in progress."""
    if status is None:
        return None
    roots = status.get("roots") or []
    signer = str((status.get("signer") or {}).get("sha256", ""))[:16]
    rotation = status.get("rotation")
    if not rotation:
        return CheckResult(
            "control-plane", "trust bundle", True, f"{len(roots)} root(s), signer {signer}"
        )
    return CheckResult(
        "control-plane",
        "root rotation",
        True,
        rotation_line(rotation),
    )


def federation_checks(status: Mapping[str, Any] | None) -> list[CheckResult]:
    """One line per federated trust domain of the CA's `ca-status.json`: the bundle in force and
    whether its last refresh from the bundle endpoint succeeded (a failed one keeps that bundle)."""
    out = []
    for td, fed in sorted(((status or {}).get("federation") or {}).items()):
        held = f"{fed.get('roots', 0)} root(s), sequence {fed.get('sequence')}"
        name = f"federated bundle of {td}"
        if fed.get("error"):
            out.append(CheckResult(
                "control-plane", name, False,
                f"{held} kept; last refresh from {fed.get('bundle_endpoint_url')} failed: "
                f"{fed['error']}"[:600],
                f"check that {td}'s bundle endpoint is up and presents "
                f"{fed.get('endpoint_spiffe_id')} (federates-with in the CA's config)",
            ))  # fmt: skip
        else:
            refreshed = fed.get("refreshed") or "not yet refreshed"
            out.append(CheckResult("control-plane", name, True, f"{held}, refreshed {refreshed}"))
    return out


def config_check(status: Mapping[str, Any] | None) -> CheckResult | None:
    """What the CA's `ca-status.json` says of its config file, followed while it runs: a refused
    edit (the last good settings stay), keys changed that wait for a restart. None: no file."""
    config = (status or {}).get("config")
    if not config:
        return None
    name = f"the control plane's config file is in force ({config.get('file')})"
    if config.get("error"):
        return CheckResult(
            "control-plane", name, False, f"edit refused: {config['error']}"[:600],
            "fix the line named above; the control plane keeps its last good settings",
        )  # fmt: skip
    pending = config.get("restart_pending") or []
    if pending:
        return CheckResult(
            "control-plane", name, False,
            f"{', '.join(pending)} changed: takes effect at restart; federates-with is live",
            "restart the control plane (on Kubernetes: kubectl rollout restart) to apply them",
        )  # fmt: skip
    return CheckResult("control-plane", name, True)


def rotation_line(rotation: Mapping[str, Any]) -> str:
    return (
        f"{rotation['phase']}: new root {str(rotation['new_root'])[:16]} trusted since "
        f"{rotation['started']}, signs from {rotation['switch_at']}; old root "
        f"{str(rotation['old_root'])[:16]} leaves the bundle at {rotation['retire_at']}"
    )


def kubernetes_policy_check(refused: Mapping[str, str] | None) -> CheckResult | None:
    """What the control plane on Kubernetes refused of the API's policy and ServiceEntry objects (its
    `kubernetes-refused.json`: {"Kind/namespace/name": why}); None when it does not watch one."""
    if refused is None:
        return None
    name = "every AuthorizationPolicy, PeerAuthentication and ServiceEntry in the API is accepted"
    if not refused:
        return CheckResult("policy", name, True)
    detail = " | ".join(f"{source}: {why}" for source, why in sorted(refused.items()))
    return CheckResult(
        "policy", name, False, f"{len(refused)} refused: {detail}"[:600],
        "fix or delete the object named above (kubectl edit/delete); the mesh keeps enforcing "
        "its last good version",
    )  # fmt: skip
