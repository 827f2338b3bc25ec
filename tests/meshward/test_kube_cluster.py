"""The local Kubernetes control plane the tests (and `meshward kube cluster up`) run."""

from __future__ import annotations

import pytest
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from meshward.kube.cluster import KUBE_VERSION, PORT_RANGE, free_ports, kubeconfig_text
from tests.harness.kube import Kube


def test_api_server_reports_the_pinned_version(kube: Kube) -> None:
    info = k8s.VersionApi(kube.api).get_code()
    assert info.git_version == KUBE_VERSION


def test_ports_are_below_the_ephemeral_range(kube: Kube) -> None:
    c = kube.cluster
    for port in (c.etcd_port, c.peer_port, c.api_port):
        assert PORT_RANGE[0] <= port < PORT_RANGE[1] < 32768


def test_rbac_is_on_a_service_account_without_bindings_is_forbidden(kube: Kube, tmp_path) -> None:
    ns = kube.namespace()
    kube.service_account(ns, "nobody")
    from kubernetes import config as k8s_config

    cfg = kube.kubeconfig_for(ns, "nobody", tmp_path / "kc")
    assert oct(cfg.stat().st_mode & 0o777) == "0o600"
    api = k8s_config.new_client_from_config(config_file=str(cfg))
    try:
        with pytest.raises(ApiException) as err:
            k8s.CoreV1Api(api).list_pod_for_all_namespaces()
        assert err.value.status == 403
    finally:
        api.close()


def test_token_request_and_token_review_round_trip(kube: Kube) -> None:
    ns = kube.namespace()
    node = kube.node()
    kube.service_account(ns, "agent")
    pod = kube.pod(ns, "agent-1", service_account="agent", node=node)
    token = kube.token(ns, "agent", pod=pod)
    review = k8s.AuthenticationV1Api(kube.api).create_token_review(
        k8s.V1TokenReview(spec=k8s.V1TokenReviewSpec(token=token, audiences=["istio-ca"]))
    )
    assert review.status.authenticated
    assert review.status.user.username == f"system:serviceaccount:{ns}:agent"
    assert review.status.user.extra["authentication.kubernetes.io/pod-uid"] == [pod["uid"]]
    other = k8s.AuthenticationV1Api(kube.api).create_token_review(
        k8s.V1TokenReview(spec=k8s.V1TokenReviewSpec(token=token, audiences=["other"]))
    )
    assert not other.status.authenticated


def test_each_test_gets_fresh_namespaces(kube: Kube) -> None:
    a, b = kube.namespace(), kube.namespace()
    assert a != b
    assert kube.core.list_namespaced_pod(a).items == []


def test_free_ports_are_distinct_and_in_range() -> None:
    ports = free_ports(20)
    assert len(set(ports)) == 20
    assert all(PORT_RANGE[0] <= p < PORT_RANGE[1] for p in ports)


def test_kubeconfig_names_files_not_keys(tmp_path) -> None:
    text = kubeconfig_text("https://127.0.0.1:1", tmp_path)
    assert "client-key: " in text
    assert "BEGIN" not in text
