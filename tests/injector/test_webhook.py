"""The webhook's answers, pure: AdmissionReview in, JSONPatch or a reason out, never a 500."""

from __future__ import annotations

import base64
import json
from typing import Any

from injector import jsonpatch
from injector.config import InjectorConfig
from injector.webhook import review


def admission(pod: dict[str, Any], *, kind: str = "Pod", operation: str = "CREATE") -> bytes:
    return json.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u-1",
                "kind": {"group": "", "version": "v1", "kind": kind},
                "operation": operation,
                "namespace": "demo",
                "object": pod,
            },
        }
    ).encode()


POD = {
    "metadata": {"generateName": "reviews-", "labels": {"app": "reviews"}},
    "spec": {"containers": [{"name": "reviews", "image": "demo"}]},
}
BAD_POD = {
    "metadata": {
        "name": "p",
        "annotations": {"traffic.sidecar.istio.io/excludeInboundPorts": "web"},
    },
    "spec": {"containers": [{"name": "a", "image": "demo"}]},
}


def test_a_pod_is_answered_with_the_injection_patch() -> None:
    answer = review(admission(POD), InjectorConfig())
    assert answer.status == 200
    response = answer.body["response"]  # type: ignore[index]
    assert response["uid"] == "u-1"
    assert response["allowed"] is True
    assert response["patchType"] == "JSONPatch"
    patched = jsonpatch.apply(POD, json.loads(base64.b64decode(response["patch"])))
    assert [c["name"] for c in patched["spec"]["containers"]] == ["reviews", "istio-proxy"]
    assert "pod demo/reviews-*: injected" in answer.log_line


def test_opted_out_pods_and_other_requests_are_admitted_unchanged() -> None:
    opted_out = {**POD, "metadata": {"labels": {"sidecar.istio.io/inject": "false"}}}
    for body in (
        admission(opted_out),
        admission(POD, kind="Service"),
        admission(POD, operation="UPDATE"),
    ):
        answer = review(body, InjectorConfig())
        assert answer.body["response"] == {"uid": "u-1", "allowed": True}  # type: ignore[index]


def test_failure_policy_fail_refuses_a_pod_it_cannot_patch_with_the_reason() -> None:
    answer = review(admission(BAD_POD), InjectorConfig(failure_policy="Fail"))
    assert answer.status == 200
    response = answer.body["response"]  # type: ignore[index]
    assert response["allowed"] is False
    assert response["status"]["code"] == 400
    assert "excludeInboundPorts: 'web' is not a port number" in response["status"]["message"]
    assert answer.log_line.startswith("pod demo/p: refused (failurePolicy Fail)")


def test_failure_policy_ignore_admits_it_unchanged_with_a_warning() -> None:
    answer = review(admission(BAD_POD), InjectorConfig(failure_policy="Ignore"))
    response = answer.body["response"]  # type: ignore[index]
    assert response["allowed"] is True
    assert "patch" not in response
    assert "is not a port number" in response["warnings"][0]
    assert "admitted without a sidecar (failurePolicy Ignore)" in answer.log_line


def test_a_body_that_is_not_an_admission_review_is_a_400_with_the_reason() -> None:
    for body in (b"{", b"[]", json.dumps({"apiVersion": "admission.k8s.io/v1beta1"}).encode()):
        answer = review(body, InjectorConfig())
        assert answer.status == 400
        assert isinstance(answer.body, str)
        assert answer.body
