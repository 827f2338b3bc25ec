"""Kill one sidecar, one node agent, then the control plane, during steady traffic: the mesh says
what failed, traffic that does not depend on the killed part continues, and `meshward up`
restarts it and heals the mesh."""

from __future__ import annotations

import pytest

from meshward.inspect.checks import FAIL_MARK
from tests.meshward.test_mesh_harness import SteadyTraffic, local_mesh

pytestmark = [pytest.mark.netns, pytest.mark.slow]


def _healed(mesh) -> None:
    done = mesh.cli("check")
    assert done.returncode == 0, done.stdout + done.stderr
    status, page = mesh.ingress()
    assert status == 200
    assert all(hop["status"] == "200" for hop in page["hops"]), page["hops"]


def _heal(mesh, component: str) -> None:
    done = mesh.up()
    assert f"restarted {component}" in done.stdout, done.stdout
    assert f"restarting {component}" in done.stdout


def test_kill_sidecar_agent_and_control_plane_then_heal():
    with local_mesh(jaeger=False) as mesh:
        mesh.up()
        with SteadyTraffic(mesh) as traffic:
            traffic.wait_for_requests(5)

            # 1. details' sidecar dies: the page still renders, reviews and ratings still answer,
            #    only details fails; status and check name the dead sidecar.
            mesh.kill("sidecar-details")
            traffic.reset()
            traffic.wait_for_requests(10)
            assert traffic.pages.keys() == {200}
            assert traffic.hops[("details", "503")] >= 10
            for service in ("productpage", "reviews", "ratings"):
                assert traffic.hops[(service, "200")] >= 10, traffic.hops
                assert not any(s == service and code != "200" for s, code in traffic.hops)
            status = mesh.cli("status").stdout
            row = next(line for line in status.splitlines() if " details " in line)
            assert "sidecar:DOWN" in row
            assert " false " in row
            check = mesh.cli("check")
            assert check.returncode == 1
            assert f"{FAIL_MARK} details: sidecar answers with its certificate" in check.stdout
            assert "meshward logs sidecar-details" in check.stdout
            _heal(mesh, "sidecar-details")
            _healed(mesh)

            # 2. node-2's agent dies: its pods keep their SVIDs, so every call still succeeds.
            mesh.kill("agent-node-2")
            traffic.reset()
            traffic.wait_for_requests(10)
            assert traffic.pages.keys() == {200}
            assert all(code == "200" for _, code in traffic.hops), traffic.hops
            check = mesh.cli("check")
            assert check.returncode == 1
            assert f"{FAIL_MARK} agent-node-2 is running" in check.stdout
            _heal(mesh, "agent-node-2")
            _healed(mesh)

            # 3. the control plane dies: the data path does not need it.
            mesh.kill("control-plane")
            traffic.reset()
            traffic.wait_for_requests(10)
            assert traffic.pages.keys() == {200}
            assert all(code == "200" for _, code in traffic.hops), traffic.hops
            check = mesh.cli("check")
            assert check.returncode == 1
            assert f"{FAIL_MARK} control plane is reachable" in check.stdout
            assert "Connection refused" in check.stdout
            status = mesh.cli("status").stdout
            assert "control-plane" in status
            assert "DOWN" in status
            _heal(mesh, "control-plane")
            _healed(mesh)
            # Traffic kept flowing through the heal of every part.
            traffic.reset()
            traffic.wait_for_requests(5)
            assert traffic.pages.keys() == {200}
