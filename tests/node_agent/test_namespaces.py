"""Two pods (network namespaces) on one node: each process gets its own identity, never another's."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness.control_plane import run_control_plane
from tests.harness.node_agent import run_node_agent

CLIENT = Path(__file__).with_name("workload_client.py")
REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.netns


@pytest.fixture
def namespaces():
    suffix = secrets.token_hex(2)
    names = {k: f"mwna-{k}-{suffix}" for k in ("a", "b", "c", "x")}
    created = []
    try:
        for name in names.values():
            subprocess.run(["ip", "netns", "add", name], check=True)
            created.append(name)
        yield names
    finally:
        for name in created:
            subprocess.run(["ip", "netns", "delete", name], check=False)


def registry(ns):
    return f"""
workloads:
  - name: reviews
    namespace: default
    serviceAccount: bookinfo-reviews
    node: node-1
    selector: {{netns: {ns["a"]}, uids: [1337]}}
  - name: reviews-v2
    namespace: default
    serviceAccount: bookinfo-reviews
    node: node-1
    selector: {{netns: {ns["c"]}}}
  - name: ratings
    namespace: shop
    serviceAccount: ratings
    node: node-1
    selector: {{netns: {ns["b"]}, uids: [1337, 1400]}}
"""


def fetch_in(netns, uid, socket_path, *extra):
    result = fetch_with_keys(netns, uid, socket_path, *extra)
    result.pop("keys", None)
    return result


def fetch_with_keys(netns, uid, socket_path, *extra):
    out = subprocess.run(
        ["ip", "netns", "exec", netns, "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
         sys.executable, str(CLIENT), str(socket_path), *extra],
        capture_output=True, text=True, timeout=60, cwd=REPO, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_each_pod_gets_its_own_identity_and_strangers_get_permission_denied(tmp_path, namespaces):
    ns = namespaces
    with (
        run_control_plane(tmp_path, registry(ns), workload_ttl="1h") as cp,
        run_node_agent(tmp_path, cp, workload_ttl="1h") as agent,
    ):
        sock = agent.socket_path
        reviews = "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
        ratings = "spiffe://cluster.local/ns/shop/sa/ratings"
        assert fetch_in(ns["a"], 1337, sock) == {"ids": [reviews], "code": "OK"}
        assert fetch_in(ns["b"], 1337, sock) == {"ids": [ratings], "code": "OK"}
        assert fetch_in(ns["b"], 1400, sock) == {"ids": [ratings], "code": "OK"}
        # right pod, wrong uid (the app, not the sidecar)
        assert fetch_in(ns["a"], 1400, sock) == {"ids": [], "code": "PERMISSION_DENIED"}
        # a namespace the registry does not know
        assert fetch_in(ns["x"], 1337, sock) == {"ids": [], "code": "PERMISSION_DENIED"}
        # same service account in another pod: same identity, but its own key
        a, c = fetch_with_keys(ns["a"], 1337, sock), fetch_with_keys(ns["c"], 1337, sock)
        assert a["ids"] == c["ids"] == [reviews]
        assert a["keys"][0] != c["keys"][0]
        assert fetch_with_keys(ns["a"], 1337, sock)["keys"] == a["keys"]  # stable until rotation
        # no security header
        assert fetch_in(ns["a"], 1337, sock, "--no-header") == {
            "ids": [],
            "code": "INVALID_ARGUMENT",
        }
