"""Which Pods get a sidecar: the webhook entries' selectors (as the API server evaluates them) and
injectRequired, as tables that read like Istio's documentation."""

from __future__ import annotations

import pytest

from injector.selection import injection_required, label_selector_matches, webhook_selects

ENABLED = {"istio-injection": "enabled"}
DISABLED = {"istio-injection": "disabled"}
REV = {"istio.io/rev": "default"}
OTHER_REV = {"istio.io/rev": "canary"}


@pytest.mark.parametrize(
    ("namespace_labels", "pod_labels", "called"),
    [
        ({}, {}, False),
        (ENABLED, {}, True),
        (ENABLED, {"sidecar.istio.io/inject": "false"}, False),
        (ENABLED, {"sidecar.istio.io/inject": "true"}, True),
        (DISABLED, {}, False),
        (DISABLED, {"sidecar.istio.io/inject": "true"}, False),  # the namespace label wins
        ({}, {"sidecar.istio.io/inject": "true"}, True),
        ({}, {"sidecar.istio.io/inject": "false"}, False),
        (REV, {}, True),
        (REV, {"sidecar.istio.io/inject": "false"}, False),
        (OTHER_REV, {}, False),
        ({}, REV, True),
        ({}, OTHER_REV, False),
        ({}, {**REV, "sidecar.istio.io/inject": "false"}, False),
        ({**ENABLED, **REV}, {}, True),  # istio-injection takes precedence over istio.io/rev
    ],
)
def test_the_api_server_calls_the_webhook_as_istios_selectors_say(
    namespace_labels: dict[str, str], pod_labels: dict[str, str], called: bool
) -> None:
    assert bool(webhook_selects("default", namespace_labels, pod_labels)) is called


def test_at_most_one_entry_fires_so_a_pod_is_never_injected_twice() -> None:
    cases = [ENABLED, DISABLED, REV, OTHER_REV, {}, {**ENABLED, **REV}]
    pods = [
        {},
        {"sidecar.istio.io/inject": "true"},
        REV,
        {**REV, "sidecar.istio.io/inject": "true"},
    ]
    for ns in cases:
        for pod in pods:
            assert len(webhook_selects("default", ns, pod)) <= 1, (ns, pod)


@pytest.mark.parametrize(
    ("metadata", "spec", "namespace", "inject", "reason"),
    [
        ({}, {}, "demo", True, "no sidecar.istio.io/inject"),
        ({"labels": {"sidecar.istio.io/inject": "true"}}, {}, "demo", True, "inject=true"),
        ({"labels": {"sidecar.istio.io/inject": "false"}}, {}, "demo", False, "inject=false"),
        ({"annotations": {"sidecar.istio.io/inject": "no"}}, {}, "demo", False, "inject=no"),
        # the label is the newer API and wins over the annotation
        (
            {
                "labels": {"sidecar.istio.io/inject": "true"},
                "annotations": {"sidecar.istio.io/inject": "false"},
            },
            {},
            "demo",
            True,
            "inject=true",
        ),
        ({}, {"hostNetwork": True}, "demo", False, "hostNetwork"),
        ({}, {}, "kube-system", False, "system namespace"),
        ({"annotations": {"sidecar.istio.io/status": "{}"}}, {}, "demo", False, "already injected"),
    ],
)
def test_injection_required_is_istios_rule_with_policy_enabled(
    metadata: dict, spec: dict, namespace: str, inject: bool, reason: str
) -> None:
    decision = injection_required(metadata, spec, namespace)
    assert decision.inject is inject
    assert reason in decision.reason


def test_label_selectors_follow_metav1_semantics() -> None:
    assert label_selector_matches({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"})
    assert not label_selector_matches({"matchLabels": {"a": "1"}}, {"a": "2"})
    exists = {"matchExpressions": [{"key": "a", "operator": "Exists"}]}
    assert label_selector_matches(exists, {"a": ""})
    assert not label_selector_matches(exists, {})
    not_in = {"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["x"]}]}
    assert label_selector_matches(not_in, {})
    assert not label_selector_matches(not_in, {"a": "x"})
