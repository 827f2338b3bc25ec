"""The README walkthrough in Kubernetes mode (`make up MESH=kubernetes`), end to end, as one test.

`meshward up --kubernetes` through scripts/mesh_up.sh builds nothing new (the binaries are cached),
starts its own API server, applies `meshward manifest generate`, runs the control plane with the
injection webhook, two development node runners, the agents as the DaemonSet's pods and the demo as
Pods the webhook injected. Then every walkthrough command, unchanged but for the policy (applied
and deleted with the API), and `make down` leaves no namespace, link, cgroup or process. Prefix
`mwup` and 10.213.96.0/24 as the file-based walkthrough (the netns lock keeps them apart).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from meshward.inspect.checks import FAIL_MARK
from meshward.kube.pod_cgroups import cgroup2_root
from tests.meshward import walkthrough_steps as steps
from tests.meshward.test_mesh_harness import PREFIX, local_mesh

pytestmark = [pytest.mark.netns, pytest.mark.slow]

POLICY_WAIT_S = 30.0  # watch -> publish -> agent -> sidecar; the figure measured is printed
TYPO_POLICY = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: typo, namespace: default}
spec:
  action: DENY
  rules: [{when: [{key: source.ipp, values: [1.2.3.4]}]}]
"""


def _pod_cgroups(mesh) -> list[Path]:
    """The kubelet-named cgroups of this mesh's pods (from the node runners' records)."""
    found = []
    for record in (mesh.state_dir / "nodes").glob("*/records/*.json"):
        found.append(cgroup2_root() / json.loads(record.read_text())["pod_cgroup"])
    return found


def test_readme_walkthrough_on_kubernetes_end_to_end(tmp_path: Path) -> None:
    with local_mesh(jaeger=True, kubernetes=True) as mesh:
        # 1. make up MESH=kubernetes, and a second run reports the running mesh.
        start = time.monotonic()
        out = mesh.make_up().stdout
        print(f"\nmeshward up --kubernetes: ready after {time.monotonic() - start:.1f} s")
        assert "the mesh is up (5 pods on node-1, node-2 from the Kubernetes API)" in out
        assert "kubectl --kubeconfig" in out
        assert "the mesh is already running" in mesh.make_up().stdout
        pods = json.loads(mesh.kubectl("get", "pods", "-n", "default", "-o", "json").stdout)
        by_name = {p["metadata"]["name"]: p for p in pods["items"]}
        assert sorted(by_name) == ["details", "productpage", "ratings", "reviews-v1", "reviews-v2"]
        for pod in by_name.values():  # injected by the webhook the control plane serves
            containers = [c["name"] for c in pod["spec"]["containers"]]
            assert containers[-1] == "istio-proxy"
            assert [c["name"] for c in pod["spec"]["initContainers"]] == ["istio-init"]
            assert "sidecar.istio.io/status" in pod["metadata"]["annotations"]
        agents = json.loads(
            mesh.kubectl("get", "pods", "-n", "istio-system", "-l", "app=meshward-node-agent",
                         "-o", "json").stdout
        )["items"]  # fmt: skip
        assert sorted(a["spec"]["nodeName"] for a in agents) == ["node-1", "node-2"]
        cgroups = _pod_cgroups(mesh)
        assert len(cgroups) == 8  # 5 demo pods, 2 agents, the ingress
        assert all(cg.is_dir() for cg in cgroups)

        # 2. curl the ingress: the page, each hop's caller identity, the trace id.
        trace_id = steps.curl_ingress(mesh)

        # 3. curl between pods, through both sidecars, as the app user.
        steps.curl_between_pods(mesh)

        # 3b. gRPC between pods: reviews -> ratings, the identity, the metric.
        steps.grpc_between_pods(mesh)

        # 4. a DENY AuthorizationPolicy applied with the API: Envoy's 403, other calls pass.
        done = mesh.kubectl("apply", "-f", str(steps.DENY_POLICY))
        assert done.returncode == 0, done.stderr
        steps.deny_enforced(mesh, POLICY_WAIT_S)

        # 5. delete it: allowed again.
        done = mesh.kubectl("delete", "-f", str(steps.DENY_POLICY))
        assert done.returncode == 0, done.stderr
        steps.deny_lifted(mesh, POLICY_WAIT_S)

        # 5b. an ALLOW policy on ratings' gRPC service: only reviews, only GetRating.
        done = mesh.kubectl("apply", "-f", str(steps.ALLOW_GRPC_POLICY))
        assert done.returncode == 0, done.stderr
        steps.grpc_allow_enforced(mesh, POLICY_WAIT_S)
        done = mesh.kubectl("delete", "-f", str(steps.ALLOW_GRPC_POLICY))
        assert done.returncode == 0, done.stderr
        steps.grpc_allow_lifted(mesh, POLICY_WAIT_S)

        # 6. the traces: the ingress request's trace, through every service.
        steps.trace_through_every_service(mesh, trace_id, within_s=30)

        # 7. inspection, the pods from the API: status, proxy-config secret, check.
        status = steps.status_and_secret(mesh)
        assert status.count("(node agent meshward-node-agent-") == 2
        typo = tmp_path / "typo.yaml"
        typo.write_text(TYPO_POLICY)
        assert mesh.kubectl("apply", "-f", str(typo)).returncode == 0
        deadline = time.monotonic() + 30
        while (done := mesh.cli("check")).returncode == 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert done.returncode == 1, done.stdout
        assert (
            f"{FAIL_MARK} every AuthorizationPolicy, PeerAuthentication and ServiceEntry"
            in done.stdout
        )
        assert "AuthorizationPolicy/default/typo" in done.stdout
        assert mesh.kubectl("delete", "-f", str(typo)).returncode == 0
        done = mesh.cli("logs", "reviews-v2")  # a pod: its containers' logs
        assert "==> default/reviews-v2/istio-proxy <==" in done.stdout, done.stdout + done.stderr
        assert "==> default/reviews-v2/reviews <==" in done.stdout

        # 8. make down: nothing is left (namespaces, links, cgroups, processes, rules).
        done = mesh.make_down()
        assert done.returncode == 0, done.stdout + done.stderr
        assert "nothing is left" in done.stdout
        assert mesh.leftovers() == []
        assert not any(Path("/etc/netns").glob(f"{PREFIX}-*"))
        assert not [cg for cg in cgroups if cg.exists()]
        assert not (mesh.state_dir / "kube").exists()
