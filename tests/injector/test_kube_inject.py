"""`meshward kube-inject`: every Pod template kind, multi-document files, stdin, and errors that
say which document and line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from injector import jsonpatch
from injector.config import InjectorConfig
from injector.workloads import inject_text, pod_patch
from meshward_common.errors import ConfigError

POD_SPEC = {"containers": [{"name": "app", "image": "demo"}]}
TEMPLATE = {"metadata": {"labels": {"app": "demo"}}, "spec": POD_SPEC}


def doc(kind: str, api: str = "apps/v1") -> dict:
    if kind == "Pod":
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": POD_SPEC}
    if kind == "CronJob":
        return {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "c"},
                "spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": TEMPLATE}}}}  # fmt: skip
    return {
        "apiVersion": api,
        "kind": kind,
        "metadata": {"name": kind.lower()},
        "spec": {"template": TEMPLATE},
    }


def names(pod_spec: dict) -> list[str]:
    return [c["name"] for c in pod_spec["containers"]]


@pytest.mark.parametrize(
    ("kind", "api"),
    [
        ("Deployment", "apps/v1"),
        ("StatefulSet", "apps/v1"),
        ("DaemonSet", "apps/v1"),
        ("ReplicaSet", "apps/v1"),
        ("Job", "batch/v1"),
    ],
)
def test_every_workload_kind_gets_the_sidecar_in_its_pod_template(kind: str, api: str) -> None:
    out = yaml.safe_load(
        inject_text(yaml.safe_dump(doc(kind, api)), InjectorConfig(), "f").text.rstrip("-\n")
    )
    assert names(out["spec"]["template"]["spec"]) == ["app", "istio-proxy"]
    assert out["kind"] == kind
    assert out["metadata"] == {"name": kind.lower()}


def test_pods_cronjobs_lists_and_other_kinds_in_one_multi_document_file() -> None:
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "s"},
        "spec": {"ports": [{"port": 80}]},
    }
    listed = {"apiVersion": "v1", "kind": "List", "items": [doc("Deployment")]}
    text = yaml.safe_dump_all([doc("Pod"), service, doc("CronJob"), listed])
    docs = [d for d in yaml.safe_load_all(inject_text(text, InjectorConfig(), "f").text) if d]
    assert names(docs[0]["spec"]) == ["app", "istio-proxy"]
    assert docs[1] == service
    assert names(docs[2]["spec"]["jobTemplate"]["spec"]["template"]["spec"]) == [
        "app",
        "istio-proxy",
    ]
    assert names(docs[3]["items"][0]["spec"]["template"]["spec"]) == ["app", "istio-proxy"]


def test_opted_out_and_already_injected_pods_are_left_alone_with_a_warning() -> None:
    opted_out = doc("Deployment")
    opted_out["spec"]["template"] = {
        "metadata": {"labels": {"sidecar.istio.io/inject": "false"}},
        "spec": POD_SPEC,
    }
    once = inject_text(yaml.safe_dump(doc("Pod")), InjectorConfig(), "f").text
    twice = inject_text(once, InjectorConfig(), "f")
    assert twice.text == once
    assert "already injected" in twice.warnings[0]
    result = inject_text(yaml.safe_dump(opted_out), InjectorConfig(), "f")
    assert yaml.safe_load(result.text.rstrip("-\n")) == opted_out
    assert 'Deployment "deployment"' in result.warnings[0]


def test_kube_inject_is_the_webhook_patch_applied() -> None:
    pod = doc("Pod")
    out = yaml.safe_load(inject_text(yaml.safe_dump(pod), InjectorConfig(), "f").text.rstrip("-\n"))
    assert out == jsonpatch.apply(pod, pod_patch(pod, InjectorConfig()))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "kind: Pod\nspec: {containers: [{name: a}]}\n---\nkind: Pod\nspec: [\n  a\n",
            "document 2, line 7",
        ),
        ("a: 1\nb: [\n", "document 1, line 3"),
        ("---\nkind: Service\n---\n- just a list\n", "document 2: not a Kubernetes object"),
        (
            "kind: Deployment\nmetadata: {name: d}\nspec: {}\n",
            'document 1: Deployment "d" has no spec.template',
        ),
        (
            "kind: Pod\nmetadata:\n  annotations:\n    traffic.sidecar.istio.io/excludeInboundPorts: web\nspec:\n  containers: [{name: a}]\n",
            "document 1: Pod \"\": annotation traffic.sidecar.istio.io/excludeInboundPorts: 'web' is not a port number",
        ),
    ],
)
def test_bad_input_names_the_document_and_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        inject_text(text, InjectorConfig(), "app.yaml")


def test_the_command_reads_stdin_writes_a_file_and_refuses_in_one_line(tmp_path: Path) -> None:
    out = tmp_path / "out.yaml"
    done = subprocess.run(
        [sys.executable, "-m", "meshward", "kube-inject", "-f", "-", "-o", str(out), "--set", "image=r/m:2"],
        input=yaml.safe_dump(doc("Deployment")), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    injected = yaml.safe_load(out.read_text().rstrip("-\n"))
    assert injected["spec"]["template"]["spec"]["containers"][1]["image"] == "r/m:2"
    bad = subprocess.run(
        [sys.executable, "-m", "meshward", "kube-inject", "-f", "-"],
        input="kind: Pod\nspec: {\n", capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == [
        "Error: <stdin>: document 1, line 3: invalid YAML: expected the node content, but found '<stream end>'"
    ]
