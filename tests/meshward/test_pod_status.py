"""The node runner's reports, pure: the pod phase as the kubelet computes it, the Pod status, and
the hosts table that stands in for cluster DNS."""

from __future__ import annotations

import datetime as dt

import pytest

from meshward.kube.node_runner import hosts_for
from meshward.kube.pod_status import ContainerFacts, phase_of, pod_status

T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


def c(state: str, code: int = 0, restarts: int = 0, ready: bool = False) -> ContainerFacts:
    return ContainerFacts("c", "ab" * 32, "img", state, exit_code=code, restarts=restarts,  # type: ignore[arg-type]
                          ready=ready)  # fmt: skip


@pytest.mark.parametrize(
    ("init", "containers", "policy", "phase"),
    [
        ([c("waiting")], [c("waiting")], "Always", "Pending"),
        ([c("terminated", 1)], [c("waiting")], "Always", "Pending"),  # init retried
        ([c("terminated", 1)], [c("waiting")], "Never", "Failed"),
        ([c("terminated")], [c("waiting")], "Always", "Pending"),
        ([c("terminated")], [c("running")], "Always", "Running"),
        ([], [c("terminated", 1, restarts=1)], "Always", "Running"),  # in back-off
        ([], [c("terminated", 0)], "Never", "Succeeded"),
        ([], [c("terminated", 0)], "OnFailure", "Succeeded"),
        ([], [c("terminated", 2)], "Never", "Failed"),
        ([], [c("terminated", 2)], "OnFailure", "Running"),  # restarted
    ],
)
def test_phase_is_the_kubelets(init, containers, policy, phase) -> None:
    assert phase_of(init, containers, policy) == phase


def test_ready_needs_every_container_ready_after_init() -> None:
    status = pod_status(
        init=[c("terminated")], containers=[c("running", ready=True), c("running")],
        restart_policy="Always", pod_ip="10.0.0.5", host_ip="10.0.0.1", qos="besteffort",
        started=T0, transitions={},
    )  # fmt: skip
    conditions = {x["type"]: x["status"] for x in status["conditions"]}
    assert conditions == {
        "PodScheduled": "True", "Initialized": "True", "ContainersReady": "False", "Ready": "False",
    }  # fmt: skip
    assert status["podIPs"] == [{"ip": "10.0.0.5"}]
    assert status["qosClass"] == "BestEffort"


def test_a_pod_the_runner_cannot_run_is_failed_with_the_reason() -> None:
    status = pod_status(
        init=[], containers=[], restart_policy="Always", pod_ip="", host_ip="10.0.0.1",
        qos="besteffort", started=T0, transitions={}, failure="not a meshward command",
    )  # fmt: skip
    assert (status["phase"], status["reason"]) == ("Failed", "Unsupported")
    assert status["message"] == "not a meshward command"


def test_hosts_answer_as_cluster_dns_for_ready_endpoints_of_existing_services() -> None:
    services = {"default/reviews": {}, "other/db": {}}
    slices = {
        "default/reviews-abc": {
            "metadata": {
                "namespace": "default",
                "labels": {"kubernetes.io/service-name": "reviews"},
            },
            "endpoints": [
                {"addresses": ["10.0.0.12"], "conditions": {"ready": True}},
                {"addresses": ["10.0.0.11"]},
                {"addresses": ["10.0.0.13"], "conditions": {"ready": False}},
            ],
        },
        "other/db-x": {
            "metadata": {"namespace": "other", "labels": {"kubernetes.io/service-name": "db"}},
            "endpoints": [{"addresses": ["10.0.0.20"]}],
        },
        "default/gone-x": {  # its Service was deleted
            "metadata": {"namespace": "default", "labels": {"kubernetes.io/service-name": "gone"}},
            "endpoints": [{"addresses": ["10.0.0.30"]}],
        },
    }
    table = hosts_for("default", services, slices)
    assert table["reviews"] == ["10.0.0.11", "10.0.0.12"]
    assert table["reviews.default.svc.cluster.local"] == ["10.0.0.11", "10.0.0.12"]
    assert table["db.other"] == ["10.0.0.20"]
    assert "db" not in table  # short names only within the pod's namespace
    assert not any(name.startswith("gone") for name in table)
