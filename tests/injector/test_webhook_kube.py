"""The injection webhook called by a real kube-apiserver: every selection rule, the injected
spec validated and stored by the API server, a Deployment's pods (kube-controller-manager makes
them), the webhook's patch equal to `kube-inject`, and a Pod it cannot patch refused with the
reason. The webhook is the control plane's own (`meshward ca serve --webhook-listen`), its
certificate issued by our CA, the API server trusting it through the caBundle."""

from __future__ import annotations

import base64
import contextlib
import copy
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from injector.config import InjectorConfig
from injector.selection import webhooks
from injector.workloads import inject_object
from tests.harness.control_plane import ControlPlane, free_port
from tests.harness.kube import admin_client, wait_for

APP = {"name": "app", "image": "meshward/demo", "ports": [{"containerPort": 9080, "name": "http"}],
       "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}}}  # fmt: skip
IMAGE = "registry.test/meshward:9.9"


@pytest.fixture(scope="module")
def injection(
    kube_cluster: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """The control plane with its webhook, registered with the API server for this module's
    namespaces only (other tests' Pods never reach it)."""
    root = tmp_path_factory.mktemp("webhook")
    config = root / "injector.yaml"
    config.write_text(f"image: {IMAGE}\nfailure_policy: Fail\n")
    port = free_port()
    cp = ControlPlane(
        root,
        "workloads: []\n",
        extra_args=("--webhook-listen", f"127.0.0.1:{port}", "--injector-config", str(config), "--workers", "1"),
    )  # fmt: skip
    api = admin_client(kube_cluster)
    core = k8s.CoreV1Api(api)
    admission = k8s.AdmissionregistrationV1Api(api)
    suffix = secrets.token_hex(3)
    names = {
        "enabled": ({"istio-injection": "enabled"}),
        "rev": ({"istio.io/rev": "default"}),
        "plain": {},
        "disabled": ({"istio-injection": "disabled"}),
    }
    namespaces = {key: f"wh-{key}-{suffix}" for key in names}
    mwc_name = f"meshward-sidecar-injector-{suffix}"
    cp.start()
    try:
        for key, labels in names.items():
            core.create_namespace({"metadata": {"name": namespaces[key], "labels": labels}})
        ca_bundle = base64.b64encode(cp.bundle_pem()).decode()
        hooks = []
        for hook in webhooks("default"):
            hook = copy.deepcopy(hook)
            hook["namespaceSelector"]["matchExpressions"].append(
                {
                    "key": "kubernetes.io/metadata.name",
                    "operator": "In",
                    "values": list(namespaces.values()),
                }
            )
            hook.update(
                clientConfig={"url": f"https://localhost:{port}/inject", "caBundle": ca_bundle},
                rules=[
                    {
                        "operations": ["CREATE"],
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "resources": ["pods"],
                    }
                ],
                failurePolicy="Fail",
                sideEffects="None",
                admissionReviewVersions=["v1"],
                timeoutSeconds=10,
                reinvocationPolicy="Never",
            )
            hooks.append(hook)
        admission.create_mutating_webhook_configuration(
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "MutatingWebhookConfiguration",
                "metadata": {"name": mwc_name},
                "webhooks": hooks,
            }
        )
        yield {"cp": cp, "api": api, "core": core, "ns": namespaces}
    finally:
        with contextlib.suppress(ApiException):
            admission.delete_mutating_webhook_configuration(mwc_name)
        for ns in namespaces.values():
            with contextlib.suppress(ApiException):
                core.delete_collection_namespaced_pod(ns, grace_period_seconds=0)
            with contextlib.suppress(ApiException):
                core.delete_namespace(ns)
        cp.stop()
        api.close()


def pod_body(name: str, labels: dict[str, str] | None = None, **annotations: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}, "annotations": annotations},
        "spec": {"containers": [copy.deepcopy(APP)], "automountServiceAccountToken": False},
    }


def create(
    injection: dict[str, Any], ns_key: str, body: dict[str, Any], dry_run: bool = False
) -> Any:
    core: k8s.CoreV1Api = injection["core"]
    ns = injection["ns"][ns_key]
    kwargs = {"dry_run": "All"} if dry_run else {}
    created = core.create_namespaced_pod(ns, body, **kwargs)
    return injection["api"].sanitize_for_serialization(created)


def containers(pod: dict[str, Any]) -> list[str]:
    return [c["name"] for c in pod["spec"]["containers"]]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("ns_key", "pod_labels", "injected"),
    [
        ("enabled", {}, True),
        ("enabled", {"sidecar.istio.io/inject": "false"}, False),
        ("rev", {}, True),
        ("rev", {"sidecar.istio.io/inject": "false"}, False),
        ("plain", {}, False),
        ("plain", {"sidecar.istio.io/inject": "true"}, True),
        ("plain", {"istio.io/rev": "default"}, True),
        ("disabled", {"sidecar.istio.io/inject": "true"}, False),
    ],
)
def test_the_api_server_injects_pods_as_istios_selection_rules_say(
    injection: dict[str, Any], ns_key: str, pod_labels: dict[str, str], injected: bool
) -> None:
    pod = create(injection, ns_key, pod_body(f"p-{secrets.token_hex(3)}", pod_labels))
    assert (containers(pod) == ["app", "istio-proxy"]) is injected
    if injected:
        assert [c["name"] for c in pod["spec"]["initContainers"]] == ["istio-init"]
        assert pod["spec"]["containers"][1]["image"] == IMAGE
        assert "sidecar.istio.io/status" in pod["metadata"]["annotations"]
    else:
        assert "initContainers" not in pod["spec"] or not pod["spec"]["initContainers"]


@pytest.mark.slow
def test_the_webhook_patch_equals_kube_inject(injection: dict[str, Any]) -> None:
    """The same Pod, injected by the webhook and by kube-inject (sent to a namespace without
    injection), as the API server stores both after defaulting."""
    body = pod_body(
        "same", {"app": "reviews"}, **{"traffic.sidecar.istio.io/excludeOutboundPorts": "5432"}
    )
    by_webhook = create(injection, "enabled", copy.deepcopy(body), dry_run=True)
    offline = inject_object(copy.deepcopy(body), InjectorConfig(image=IMAGE), lambda _: None)
    by_kube_inject = create(injection, "plain", offline, dry_run=True)
    assert by_webhook["spec"] == by_kube_inject["spec"]
    assert by_webhook["metadata"]["annotations"] == by_kube_inject["metadata"]["annotations"]
    assert containers(by_webhook) == ["app", "istio-proxy"]


@pytest.mark.slow
def test_a_pod_the_webhook_cannot_patch_is_refused_with_the_reason_and_logged(
    injection: dict[str, Any],
) -> None:
    body = pod_body("bad", **{"traffic.sidecar.istio.io/excludeInboundPorts": "web"})
    with pytest.raises(ApiException) as info:
        create(injection, "enabled", body)
    assert info.value.status == 400
    assert "excludeInboundPorts: 'web' is not a port number" in str(info.value.body)
    cp: ControlPlane = injection["cp"]
    wait_for("the refusal's log line", lambda: "refused (failurePolicy Fail)" in cp.log())


@pytest.mark.slow
def test_a_deployments_pods_are_injected(injection: dict[str, Any]) -> None:
    apps = k8s.AppsV1Api(injection["api"])
    ns = injection["ns"]["enabled"]
    apps.create_namespaced_deployment(
        ns,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "reviews"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "reviews"}},
                "template": {
                    "metadata": {"labels": {"app": "reviews"}},
                    "spec": pod_body("x")["spec"],
                },
            },
        },
    )
    core: k8s.CoreV1Api = injection["core"]

    def pods() -> list[Any]:
        found = core.list_namespaced_pod(ns, label_selector="app=reviews").items
        return found if len(found) == 2 else []

    for pod in wait_for("the Deployment's two pods", pods, timeout=60):
        assert [c.name for c in pod.spec.containers] == ["app", "istio-proxy"]
        probe = pod.spec.containers[0].readiness_probe.http_get
        assert (probe.path, probe.port) == ("/app-health/app/readyz", 15020)
