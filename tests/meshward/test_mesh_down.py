"""`meshward down` after a crash of `meshward up` halfway leaves nothing; `up` without root builds
nothing; a second `down` is harmless."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from tests.meshward.test_mesh_harness import PREFIX, REPO, local_mesh, meshward_argv

pytestmark = pytest.mark.netns


def test_down_after_up_crashed_halfway_leaves_nothing():
    with local_mesh(jaeger=False) as mesh:
        proc = subprocess.Popen(
            meshward_argv("up", "--state-dir", str(mesh.state_dir), *mesh.up_args()[1:]),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=mesh.env, cwd=REPO,
        )  # fmt: skip
        # Crash it once the pods and the first agent exist, before the sidecars start.
        deadline = time.monotonic() + 60
        agent_log = mesh.state_dir / "logs" / "agent-node-1.log"
        while not agent_log.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert mesh.leftovers(), "the crash should have left a half-built mesh to clean up"
        done = mesh.down()
        assert done.returncode == 0, done.stdout + done.stderr
        assert "nothing is left" in done.stdout
        assert mesh.leftovers() == []
        again = mesh.down()
        assert again.returncode == 0
        assert "nothing is left" in again.stdout


def test_up_without_root_says_so_and_builds_nothing(tmp_path):
    state = tmp_path / "state"
    done = subprocess.run(
        ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "--",
         *meshward_argv("up", "--state-dir", str(state), "--prefix", PREFIX)],
        capture_output=True, text=True, cwd=REPO, env=dict(os.environ), timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip() == "meshward up: needs root or CAP_NET_ADMIN (try sudo)"
    assert not state.exists()
    assert (
        f"{PREFIX}-br"
        not in subprocess.run(
            ["ip", "-o", "link"], capture_output=True, text=True, check=True
        ).stdout
    )


def test_up_refuses_to_clobber_a_mesh_started_from_another_state_dir(tmp_path):
    from meshward.pods import PodNetwork, list_links
    from tests.meshward.test_mesh_harness import SUBNET, require_root

    require_root()
    with PodNetwork(PREFIX, SUBNET):  # stands for a mesh another state dir started
        done = subprocess.run(
            meshward_argv("up", "--state-dir", str(tmp_path / "other"), "--prefix", PREFIX,
                          "--subnet", SUBNET, "--no-jaeger"),
            capture_output=True, text=True, cwd=REPO, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 1
        assert "another mesh uses prefix 'mwup'" in done.stderr
        assert f"{PREFIX}-br" in list_links()  # untouched
    assert f"{PREFIX}-br" not in list_links()
