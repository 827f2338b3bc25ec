"""The README walkthrough, every command of it, against a real mesh:
up, the ingress and its identity headers, pod-to-pod calls (HTTP and the gRPC hop), a DENY policy and
its removal, a gRPC ALLOW policy on one method, traces, inspection, down - and then nothing is
left."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from meshward.inspect.checks import FAIL_MARK
from tests.meshward import walkthrough_steps as steps
from tests.meshward.test_mesh_harness import PREFIX, local_mesh

pytestmark = [pytest.mark.netns, pytest.mark.slow]

POLICY_WAIT_S = 10.0  # the design says seconds; the figure measured is printed


def test_readme_walkthrough_end_to_end():
    with local_mesh(jaeger=True) as mesh:
        # 1. make up, and a second run reports the running mesh.
        start = time.monotonic()
        out = mesh.make_up().stdout
        print(f"\nmeshward up: ready after {time.monotonic() - start:.1f} s")
        assert "the mesh is up (5 pods on node-1, node-2)" in out
        assert f"curl localhost:{mesh.ingress_port}/productpage" in out
        assert "-- python -m meshward.demo.rpc ratings:9090 GetRating 1" in out  # step 3b
        again = mesh.make_up().stdout
        assert "the mesh is already running" in again

        # 2. curl the ingress: the page, each hop's caller identity, the trace id.
        trace_id = steps.curl_ingress(mesh)

        # 3. curl between pods, through both sidecars, as the app user.
        steps.curl_between_pods(mesh)

        # 3b. gRPC between pods: reviews -> ratings, the identity, the metric.
        steps.grpc_between_pods(mesh)

        # 4. a DENY policy: productpage -> reviews gets Envoy's 403, other calls still pass.
        policy = mesh.state_dir / "policies" / steps.DENY_POLICY.name
        shutil.copy(steps.DENY_POLICY, policy)
        steps.deny_enforced(mesh, POLICY_WAIT_S)

        # 5. remove it: allowed again.
        policy.unlink()
        steps.deny_lifted(mesh, POLICY_WAIT_S)

        # 5b. an ALLOW policy on ratings' gRPC service: only reviews, only GetRating.
        allow = mesh.state_dir / "policies" / steps.ALLOW_GRPC_POLICY.name
        shutil.copy(steps.ALLOW_GRPC_POLICY, allow)
        steps.grpc_allow_enforced(mesh, POLICY_WAIT_S)
        allow.unlink()
        steps.grpc_allow_lifted(mesh, POLICY_WAIT_S)

        # 6. the traces: the ingress request's trace, through every service.
        steps.trace_through_every_service(mesh, trace_id, within_s=20)

        # 7. inspection: status, proxy-config secret, check.
        status = steps.status_and_secret(mesh)
        assert f"{steps.TD}/ns/default/sa/bookinfo-ratings" in status
        broken = mesh.state_dir / "policies" / "broken.yaml"
        broken.write_text("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nspec: [\n")
        done = mesh.cli("check")
        assert done.returncode == 1
        assert f"{FAIL_MARK} every policy file is valid" in done.stdout
        assert "broken.yaml" in done.stdout
        assert "fix: fix or remove the file named above" in done.stdout
        broken.unlink()
        done = mesh.cli("logs", "ingress")
        assert done.returncode == 0, done.stderr
        assert f"ingress on 127.0.0.1:{mesh.ingress_port}" in done.stdout
        done = mesh.cli("logs", "reviews-v2")  # a pod: its sidecar's and its app's logs
        assert "==> sidecar-reviews-v2 <==" in done.stdout
        assert "==> app-reviews-v2 <==" in done.stdout

        # 8. make down: nothing is left.
        done = mesh.make_down()
        assert done.returncode == 0, done.stdout + done.stderr
        assert "nothing is left" in done.stdout
        assert mesh.leftovers() == []
        assert not any(Path("/etc/netns").glob(f"{PREFIX}-*"))
        assert (mesh.state_dir / "logs" / "control-plane.log").exists()  # logs are kept
