"""The node runner's plan for a Pod: what it runs, as whom, in which cgroup."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from injector.config import InjectorConfig
from injector.template import inject_pod
from meshward.kube.pod_plan import Unsupported, expand, plan_pod, qos_class

UID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
POD: dict[str, Any] = {
    "metadata": {
        "name": "reviews-v1",
        "namespace": "demo",
        "uid": UID,
        "labels": {"app": "reviews"},
    },
    "spec": {
        "nodeName": "node-1",
        "serviceAccountName": "bookinfo-reviews",
        "securityContext": {"runAsUser": 1000},
        "containers": [
            {
                "name": "reviews",
                "image": "meshward/meshward:0.1.0",
                "command": ["python", "-m", "meshward.demo"],
                "args": ["reviews", "--pod", "$(POD_NAME)", "--port", "9080", "$$(literal)"],
                "env": [
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
                ],
            }
        ],
    },
}


def test_an_injected_pod_runs_init_first_then_app_and_sidecar_as_their_users() -> None:
    pod = inject_pod(POD, InjectorConfig())
    pod["metadata"]["uid"] = UID
    plan = plan_pod(pod, "10.1.0.5", "10.1.0.1", "/py")
    assert [p.container for p in plan.init_containers] == ["istio-init"]
    init = plan.init_containers[0]
    assert init.argv[:5] == ("/py", "-m", "meshward", "sidecar", "init")
    assert (init.uid, init.gid) == (0, 0)
    app, proxy = plan.containers
    assert app.argv == (
        "/py",
        "-m",
        "meshward.demo",
        "reviews",
        "--pod",
        "reviews-v1",
        "--port",
        "9080",
        "$(literal)",
    )
    assert (app.uid, app.gid) == (1000, 1000)
    assert (proxy.uid, proxy.gid) == (1337, 1337)
    assert "--pod-ip" in proxy.argv
    assert proxy.argv[proxy.argv.index("--pod-ip") + 1] == "10.1.0.5"
    assert proxy.env["SERVICE_ACCOUNT"] == "bookinfo-reviews"
    assert plan.readiness["istio-proxy"]["httpGet"]["port"] == 15021


def test_processes_live_in_cgroups_named_as_the_kubelet_names_them() -> None:
    plan = plan_pod(POD, "10.1.0.5", "10.1.0.1", "/py")
    assert plan.cgroup == f"kubepods/besteffort/pod{UID}"
    process = plan.containers[0]
    assert process.cgroup == f"{plan.cgroup}/{process.container_id}"
    assert len(process.container_id) == 64
    assert (
        plan_pod(POD, "10.1.0.5", "10.1.0.1", "/py").containers[0].container_id
        == process.container_id
    )


@pytest.mark.parametrize(
    ("resources", "qos"),
    [
        ([{}], "besteffort"),
        ([{"requests": {"cpu": "100m"}}], "burstable"),
        ([{"limits": {"cpu": "1", "memory": "1Gi"}}], "guaranteed"),
        (
            [
                {
                    "limits": {"cpu": "1", "memory": "1Gi"},
                    "requests": {"cpu": "500m", "memory": "1Gi"},
                }
            ],
            "burstable",
        ),
        ([{"limits": {"cpu": "1", "memory": "1Gi"}}, {}], "burstable"),
    ],
)
def test_qos_class_is_the_kubelets(resources: list[dict[str, Any]], qos: str) -> None:
    assert qos_class([{"resources": r} for r in resources]) == qos


def test_variable_expansion_is_kubernetes() -> None:
    env = {"A": "1", "B": "x"}
    assert expand("$(A)-$(B)-$(C)-$$(A)", env) == "1-x-$(C)-$(A)"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda p: p["spec"]["containers"][0].update(command=["/bin/sh", "-c", "x"]),
            "only meshward's own commands",
        ),
        (
            lambda p: p["spec"].update(volumes=[{"name": "s", "secret": {"secretName": "x"}}]),
            "not secret",
        ),
        (
            lambda p: (
                p["spec"].update(volumes=[{"name": "v", "emptyDir": {}}]),
                p["spec"]["containers"][0].update(
                    volumeMounts=[{"name": "v", "mountPath": "/etc/x"}]
                ),
            ),
            "not under /var/run/secrets/",
        ),
        (
            lambda p: p["spec"]["containers"][0].update(
                volumeMounts=[{"name": "nope", "mountPath": "/var/run/secrets/x"}]
            ),
            "no volume of that name",
        ),
        (
            lambda p: p["spec"].update(volumes=[{"name": "h", "hostPath": {"path": "/a/../b"}}]),
            "without '..'",
        ),
        (
            lambda p: p["spec"]["containers"][0]["env"].append(
                {"name": "X", "valueFrom": {"secretKeyRef": {}}}
            ),
            "only value and fieldRef",
        ),
        (
            lambda p: p["spec"]["containers"][0]["env"].append(
                {"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "status.podIPs"}}}
            ),
            "not supported",
        ),
    ],
)
def test_what_the_runner_cannot_run_is_refused_with_the_reason(edit: Any, message: str) -> None:
    pod = copy.deepcopy(POD)
    edit(pod)
    with pytest.raises(Unsupported, match=message):
        plan_pod(pod, "10.1.0.5", "10.1.0.1", "/py")


def test_volumes_live_on_the_node_and_are_seen_under_var_run_secrets() -> None:
    pod = inject_pod(POD, InjectorConfig(socket_host_dir="/var/run/meshward/agent"))
    pod["metadata"]["uid"] = UID
    pod["spec"]["volumes"].append({"name": "scratch", "emptyDir": {}})
    pod["spec"]["containers"][0]["volumeMounts"] = [
        {"name": "scratch", "mountPath": "/var/run/secrets/scratch"}
    ]
    plan = plan_pod(pod, "10.1.0.5", "10.1.0.1", "/py", node_root="/n1", pod_dir="/n1/pods/p")
    volumes = {v.name: v for v in plan.volumes}
    # a hostPath is the node's own: two development nodes on one host never share it
    assert volumes["workload-socket"].path == "/n1/host/var/run/meshward/agent"
    assert volumes["scratch"].path == "/n1/pods/p/volumes/scratch"
    app, proxy = plan.containers
    assert app.mounts[0].target == "/var/run/secrets/scratch"
    (socket,) = proxy.mounts
    assert socket.source == "/n1/host/var/run/meshward/agent"
    assert socket.target == "/var/run/secrets/workload-spiffe-uds"
    assert socket.read_only is True
    assert plan.host_network is False
