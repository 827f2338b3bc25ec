"""What injection adds to a Pod, and that it changes nothing else."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from injector.config import InjectorConfig
from injector.template import init_args, inject_pod
from meshward_common.errors import ConfigError, InvalidRequest

CONFIG = InjectorConfig(image="registry.example/meshward:1.2.3")


def app_pod(**annotations: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "reviews-v1",
            "labels": {"app": "reviews"},
            "annotations": annotations,
        },
        "spec": {
            "serviceAccountName": "bookinfo-reviews",
            "initContainers": [{"name": "migrate", "image": "x"}],
            "containers": [
                {
                    "name": "reviews",
                    "image": "x",
                    "ports": [{"containerPort": 9080, "name": "http"}],
                    "readinessProbe": {
                        "httpGet": {"path": "/ready", "port": "http"},
                        "timeoutSeconds": 2,
                    },
                    "livenessProbe": {"tcpSocket": {"port": 9080}},
                    "securityContext": {"runAsUser": 1000},
                }
            ],
            "volumes": [{"name": "data", "emptyDir": {}}],
        },
    }


def container(pod: dict[str, Any], name: str, key: str = "containers") -> dict[str, Any]:
    return next(c for c in pod["spec"][key] if c["name"] == name)


def test_the_init_container_writes_the_rules_as_root_with_only_net_admin_and_net_raw() -> None:
    pod = inject_pod(app_pod(), CONFIG)
    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["migrate", "istio-init"]
    init = container(pod, "istio-init", "initContainers")
    assert init["image"] == CONFIG.image
    assert init["args"][:2] == ["sidecar", "init"]
    assert init["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        "readOnlyRootFilesystem": False,
        "runAsGroup": 0,
        "runAsNonRoot": False,
        "runAsUser": 0,
    }


def test_default_init_args_are_istio_iptables_defaults() -> None:
    args = init_args({})
    flags = dict(zip(args[2::2], args[3::2], strict=True))
    assert flags == {
        "-p": "15001", "-z": "15006", "-u": "1337", "-g": "1337", "-m": "REDIRECT",
        "-i": "*", "-x": "", "-b": "*", "-d": "15090,15021,15020",
    }  # fmt: skip


def test_traffic_annotations_become_init_flags() -> None:
    args = init_args(
        {
            "traffic.sidecar.istio.io/includeOutboundIPRanges": "10.0.0.0/8, 172.16.0.0/12",
            "traffic.sidecar.istio.io/excludeOutboundIPRanges": "10.96.0.1/32",
            "traffic.sidecar.istio.io/includeInboundPorts": "9080,9443",
            "traffic.sidecar.istio.io/excludeInboundPorts": "8081,15021",
            "traffic.sidecar.istio.io/excludeOutboundPorts": "5432",
        }
    )
    flags = dict(zip(args[2::2], args[3::2], strict=True))
    assert flags["-i"] == "10.0.0.0/8,172.16.0.0/12"
    assert flags["-x"] == "10.96.0.1/32"
    assert flags["-b"] == "9080,9443"
    assert flags["-d"] == "15090,15021,15020,8081"
    assert flags["-o"] == "5432"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("includeOutboundIPRanges", "10.0.0.0/33", "is not a CIDR"),
        ("excludeOutboundIPRanges", "fd00::/8", "IPv6"),
        ("includeInboundPorts", "http", "not a port number"),
        ("excludeInboundPorts", "70000", "not a TCP port"),
        ("excludeOutboundPorts", "*", "an exclusion cannot be '*'"),
    ],
)
def test_a_bad_traffic_annotation_fails_injection_with_its_name(
    key: str, value: str, message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message) as info:
        inject_pod(app_pod(**{f"traffic.sidecar.istio.io/{key}": value}), CONFIG)
    assert key in str(info.value)


def test_the_proxy_runs_as_1337_read_only_unprivileged_and_is_ready_on_15021() -> None:
    pod = inject_pod(app_pod(), CONFIG)
    assert [c["name"] for c in pod["spec"]["containers"]] == ["reviews", "istio-proxy"]
    proxy = container(pod, "istio-proxy")
    assert proxy["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsGroup": 1337,
        "runAsNonRoot": True,
        "runAsUser": 1337,
    }
    assert proxy["readinessProbe"]["httpGet"] == {
        "path": "/healthz/ready",
        "port": 15021,
        "scheme": "HTTP",
    }
    assert {"containerPort": 15090, "name": "http-envoy-prom", "protocol": "TCP"} in proxy["ports"]
    assert proxy["volumeMounts"] == [
        {
            "name": "workload-socket",
            "mountPath": "/var/run/secrets/workload-spiffe-uds",
            "readOnly": True,
        }
    ]
    volume = pod["spec"]["volumes"][-1]
    assert volume == {
        "name": "workload-socket",
        "hostPath": {"path": "/var/run/meshward/agent", "type": "Directory"},
    }
    assert "--service" in proxy["args"]
    assert proxy["args"][proxy["args"].index("--service") + 1] == "reviews"


def test_annotations_say_what_was_injected_and_where_prometheus_scrapes() -> None:
    pod = inject_pod(app_pod(), CONFIG)
    annotations = pod["metadata"]["annotations"]
    assert json.loads(annotations["sidecar.istio.io/status"]) == {
        "initContainers": ["istio-init"],
        "containers": ["istio-proxy"],
        "volumes": ["workload-socket"],
        "imagePullSecrets": None,
        "revision": "default",
    }
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "15090"
    assert annotations["prometheus.io/path"] == "/stats/prometheus"
    assert annotations["kubectl.kubernetes.io/default-container"] == "reviews"


def test_the_pods_own_prometheus_annotations_are_kept() -> None:
    pod = inject_pod(app_pod(**{"prometheus.io/scrape": "false"}), CONFIG)
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "false"
    assert "prometheus.io/port" not in annotations


def test_http_probes_go_through_the_sidecar_and_others_stay() -> None:
    pod = inject_pod(app_pod(), CONFIG)
    app = container(pod, "reviews")
    assert app["readinessProbe"] == {
        "httpGet": {"path": "/app-health/reviews/readyz", "port": 15020, "scheme": "HTTP"},
        "timeoutSeconds": 2,
    }
    assert app["livenessProbe"] == {"tcpSocket": {"port": 9080}}
    env = {e["name"]: e for e in container(pod, "istio-proxy")["env"]}
    assert json.loads(env["ISTIO_KUBE_APP_PROBERS"]["value"]) == {
        "/app-health/reviews/readyz": {
            "httpGet": {"path": "/ready", "port": 9080, "scheme": "HTTP"},
            "timeoutSeconds": 2,
        }
    }
    assert env["INSTANCE_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"


def test_probe_rewriting_can_be_turned_off_per_pod() -> None:
    pod = inject_pod(app_pod(**{"sidecar.istio.io/rewriteAppHTTPProbers": "false"}), CONFIG)
    assert container(pod, "reviews")["readinessProbe"]["httpGet"]["port"] == "http"
    assert "ISTIO_KUBE_APP_PROBERS" not in {e["name"] for e in container(pod, "istio-proxy")["env"]}


def test_nothing_else_of_the_pod_changes() -> None:
    original = app_pod(**{"team": "books"})
    pod = inject_pod(original, CONFIG)
    assert original == app_pod(**{"team": "books"})  # the input is not touched
    stripped = copy.deepcopy(pod)
    spec = stripped["spec"]
    spec["containers"] = [c for c in spec["containers"] if c["name"] != "istio-proxy"]
    spec["initContainers"] = [c for c in spec["initContainers"] if c["name"] != "istio-init"]
    spec["volumes"] = [v for v in spec["volumes"] if v["name"] != "workload-socket"]
    spec["containers"][0]["readinessProbe"] = original["spec"]["containers"][0]["readinessProbe"]
    for key in (
        "sidecar.istio.io/status",
        "prometheus.io/scrape",
        "prometheus.io/port",
        "prometheus.io/path",
        "kubectl.kubernetes.io/default-container",
    ):
        del stripped["metadata"]["annotations"][key]
    assert stripped == original


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda p: p["spec"].update(containers=[]), "no containers"),
        (
            lambda p: p["spec"]["containers"].append({"name": "istio-proxy"}),
            "already has a container named istio-proxy",
        ),
        (
            lambda p: p["spec"]["containers"][0]["readinessProbe"]["httpGet"].update(port="grpc"),
            "not a named port",
        ),
        (lambda p: p["metadata"].update(labels=["a"]), "metadata.labels is not a map"),
        (lambda p: p.pop("spec"), "no spec"),
    ],
)
def test_a_pod_that_cannot_be_injected_says_why(edit: Any, message: str) -> None:
    pod = app_pod()
    edit(pod)
    with pytest.raises(InvalidRequest, match=message):
        inject_pod(pod, CONFIG)


def test_injector_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="image"):
        InjectorConfig(image="bad image")
    with pytest.raises(ConfigError, match="failure_policy"):
        InjectorConfig.from_mapping({"failure_policy": "Sometimes"}, "--set")
    with pytest.raises(ConfigError, match="unknown injector setting"):
        InjectorConfig.from_mapping({"imag": "x"}, "--set")
    assert (
        InjectorConfig.from_mapping({"rewrite_app_probes": "false"}, "--set").rewrite_app_probes
        is False
    )
