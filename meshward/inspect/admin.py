"""Reading a sidecar's pod-local endpoints: its admin port listens on 127.0.0.1 inside the pod, so
the request runs inside the pod's network namespace (`ip netns exec <netns> curl`)."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from meshward_common import ports
from meshward_common.errors import NotReady

FETCH_TIMEOUT_S = 3


def fetch_in_pod(netns: str, port: int, path: str) -> tuple[int, str]:
    """(HTTP status, body) of GET http://127.0.0.1:<port><path> inside `netns` (0: no answer)."""
    argv = ["ip", "netns", "exec", netns, "curl", "-s", "-m", str(FETCH_TIMEOUT_S)]
    argv += ["-w", "\n%{http_code}", f"http://127.0.0.1:{port}{path}"]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=FETCH_TIMEOUT_S + 2, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return 0, ""
    body, _, code = done.stdout.rpartition("\n")
    return (int(code) if code.isdigit() else 0), body


def sidecar_certs(netns: str) -> Any:
    """The sidecar's `/certs` answer (JSON), or NotReady saying why there is none."""
    status, body = fetch_in_pod(netns, ports.ADMIN, "/certs")
    if status != 200:
        where = f"127.0.0.1:{ports.ADMIN}/certs in netns {netns}"
        raise NotReady(f"sidecar admin {where} answered {status or 'nothing'}")
    try:
        return json.loads(body)
    except ValueError as exc:
        raise NotReady(f"sidecar admin /certs in netns {netns} is not JSON: {exc}") from exc


def sidecar_ready(netns: str) -> bool:
    status, _ = fetch_in_pod(netns, ports.HEALTH, "/healthz/ready")
    return status == 200
