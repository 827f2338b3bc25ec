"""`meshward node run --kubernetes`: Pods bound to the node, run for real against the API server.

A real runner process, the session's API server, a real bridge (prefix `mwnr`, 10.213.144.0/24):
a Pod gets its own network namespace and address, its init container runs to completion first,
its app runs as its securityContext user in the cgroup the kubelet would give it (the one the node
agent's attestation reads), its volumes are where it asked for them, and its readiness probe and
status are reported; a Pod the runner cannot run is Failed with the reason; a deleted Pod leaves
no namespace, cgroup or process behind, nor does the runner when it stops.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshward.kube.pod_cgroups import cgroup2_root
from meshward.pods import list_netns
from node_agent.kube_attestation import pod_of_cgroup
from tests.harness.kube import Kube, wait_for
from tests.harness.pods import pod_network

pytestmark = [pytest.mark.netns, pytest.mark.slow]

PREFIX, SUBNET, POD_CIDR = "mwnr", "10.213.144.0/24", "10.213.144.16/28"


@contextlib.contextmanager
def node_runner(kube: Kube, node: str, root: Path) -> Iterator[subprocess.Popen[bytes]]:
    log = (root / "runner.log").open("ab")
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "meshward", "node", "run", "--kubernetes", "--node", node,
            "--kubeconfig", str(kube.cluster.kubeconfig), "--root", str(root / "node"),
            "--prefix", PREFIX, "--subnet", SUBNET, "--pod-cidr", POD_CIDR,
        ],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def _pod(name: str, node: str, containers: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"nodeName": node, "containers": containers, **spec},
    }


def _status(kube: Kube, ns: str, name: str) -> dict[str, Any]:
    return kube.api.sanitize_for_serialization(kube.core.read_namespaced_pod_status(name, ns))[
        "status"
    ]


def _ready(kube: Kube, ns: str, name: str) -> dict[str, Any] | None:
    status = _status(kube, ns, name)
    conditions = {c["type"]: c["status"] for c in status.get("conditions") or []}
    return status if conditions.get("Ready") == "True" else None


def _gone(kube: Kube, ns: str, name: str) -> bool:
    from kubernetes.client.rest import ApiException

    try:
        kube.core.read_namespaced_pod(name, ns)
    except ApiException as exc:
        return exc.status == 404
    return False


def test_a_bound_pod_runs_as_the_kubelet_would_run_it_and_is_removed_when_deleted(
    kube: Kube, tmp_path: Path
) -> None:
    ns = kube.namespace("nr")
    kube.service_account(ns, "ratings")
    node = f"nr-{os.urandom(3).hex()}"
    kube.nodes.append(node)
    app = {
        "name": "ratings",
        "image": "meshward/meshward:0.1.0",
        "command": ["python", "-m", "meshward.demo"],
        "args": ["ratings", "--port", "9080", "--pod", "$(POD_NAME)"],
        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        "securityContext": {"runAsUser": 1000, "runAsGroup": 1000},
        "readinessProbe": {"httpGet": {"path": "/ratings/1", "port": 9080}, "periodSeconds": 1},
        "volumeMounts": [
            {"name": "token", "mountPath": "/var/run/secrets/tokens", "readOnly": True},
            {"name": "scratch", "mountPath": "/var/run/secrets/scratch"},
        ],
    }
    init = {"name": "first", "image": "meshward/meshward:0.1.0", "args": ["--version"]}
    volumes = [
        {
            "name": "token",
            "projected": {
                "sources": [{"serviceAccountToken": {"audience": "istio-ca", "path": "t"}}]
            },
        },
        {"name": "scratch", "emptyDir": {}},
    ]
    with pod_network(PREFIX, SUBNET), node_runner(kube, node, tmp_path) as runner:
        wait_for(f"Node {node} Ready", lambda: _node_ready(kube, node))
        body = _pod("ratings", node, [app], initContainers=[init], volumes=volumes,
                    serviceAccountName="ratings", automountServiceAccountToken=False)  # fmt: skip
        kube.core.create_namespaced_pod(ns, body)
        bad = _pod("shell", node, [{"name": "sh", "image": "busybox", "command": ["/bin/sh"]}])
        kube.core.create_namespaced_pod(ns, bad)

        status = wait_for("the pod Ready", lambda: _ready(kube, ns, "ratings"), timeout=90)
        assert status["phase"] == "Running"
        ip = status["podIP"]
        assert ip.startswith("10.213.144.")
        assert 16 < int(ip.rsplit(".", 1)[1]) < 32
        assert status["hostIP"] == "10.213.144.1"
        assert status["qosClass"] == "BestEffort"
        (first,) = status["initContainerStatuses"]
        assert first["state"]["terminated"]["exitCode"] == 0
        (ratings,) = status["containerStatuses"]
        assert ratings["ready"] is True
        assert ratings["containerID"].startswith("meshward://")
        with urllib.request.urlopen(f"http://{ip}:9080/ratings/1", timeout=10) as answer:
            assert json.loads(answer.read())["pod"] == "ratings"

        # The app's process: its user, its cgroup (as attestation reads it), its netns, its files.
        uid = kube.core.read_namespaced_pod("ratings", ns).metadata.uid
        cid = ratings["containerID"].removeprefix("meshward://")
        cgroup = cgroup2_root() / "kubepods" / "besteffort" / f"pod{uid}" / cid
        pid = wait_for("the app's process in its cgroup", lambda: _pids_of(uid))[0]
        proc_status = Path(f"/proc/{pid}/status").read_text()
        assert "Uid:\t1000\t1000\t1000\t1000" in proc_status
        found = pod_of_cgroup(Path(f"/proc/{pid}/cgroup").read_text())
        assert found is not None
        assert (found.pod_uid, found.container_id) == (uid, cid)
        netns = subprocess.run(["ip", "netns", "identify", pid], capture_output=True, text=True)
        assert netns.stdout.strip().startswith(f"{PREFIX}-ratings-")
        token_file = f"/proc/{pid}/root/var/run/secrets/tokens/t"
        assert not Path(token_file).exists()  # a private mount: the host's view has no such file
        token = subprocess.run(
            ["nsenter", "-t", pid, "-m", "cat", "/var/run/secrets/tokens/t"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        review = kube.api.sanitize_for_serialization(
            __import__("kubernetes")
            .client.AuthenticationV1Api(kube.api)
            .create_token_review({"spec": {"token": token, "audiences": ["istio-ca"]}})
        )["status"]
        assert review["authenticated"] is True
        assert review["user"]["username"] == f"system:serviceaccount:{ns}:ratings"
        assert review["user"]["extra"]["authentication.kubernetes.io/pod-name"] == ["ratings"]

        # What the runner cannot run: Failed, with the reason.
        failed = wait_for(
            "the unsupported pod Failed",
            lambda: (s := _status(kube, ns, "shell")).get("phase") == "Failed" and s,
        )
        assert "only meshward's own commands" in failed["message"]

        # Deleted: the runner stops it, removes namespace and cgroups, confirms the deletion.
        kube.core.delete_namespaced_pod("ratings", ns)
        wait_for("the pod gone from the API", lambda: _gone(kube, ns, "ratings"), timeout=60)
        assert not cgroup.exists()
        assert not (cgroup.parent).exists()
        assert not Path(f"/proc/{pid}").exists()
        assert not [n for n in list_netns() if n.startswith(f"{PREFIX}-ratings-")]

        # A second pod with the API server's default ServiceAccount volume (a projected token,
        # kube-root-ca.crt and the namespace), then the runner stops: nothing of its pods is left.
        plain = {k: v for k, v in app.items() if k not in ("readinessProbe", "volumeMounts")}
        kube.core.create_namespaced_pod(ns, _pod("again", node, [plain]))
        again = wait_for("the second pod Ready", lambda: _ready(kube, ns, "again"), timeout=90)
        assert again["podIP"].startswith("10.213.144.")
        again_uid = kube.core.read_namespaced_pod("again", ns).metadata.uid
        again_pid = wait_for("the second pod's process", lambda: _pids_of(again_uid))[0]
        sa_dir = "/var/run/secrets/kubernetes.io/serviceaccount"
        listing = subprocess.run(
            ["nsenter", "-t", again_pid, "-m", "ls", sa_dir], capture_output=True, text=True
        ).stdout.split()
        assert sorted(listing) == ["ca.crt", "namespace", "token"]
        os.killpg(runner.pid, signal.SIGTERM)
        assert runner.wait(30) == 0
        assert not [n for n in list_netns() if n.startswith(f"{PREFIX}-")]
        assert not (cgroup2_root() / "kubepods" / "besteffort" / f"pod{again_uid}").exists()
        assert not list((tmp_path / "node" / "records").glob("*.json"))


def _node_ready(kube: Kube, node: str) -> bool:
    from kubernetes.client.rest import ApiException

    try:
        status = kube.core.read_node_status(node).status
    except ApiException:
        return False
    return any(c.type == "Ready" and c.status == "True" for c in status.conditions or [])


def _pids_of(pod_uid: str) -> list[str]:
    """The pids in the pod's container cgroups (as the kubelet names them)."""
    pod = cgroup2_root() / "kubepods" / "besteffort" / f"pod{pod_uid}"
    return [pid for cg in sorted(pod.iterdir()) if cg.is_dir()
            for pid in (cg / "cgroup.procs").read_text().split()]  # fmt: skip
