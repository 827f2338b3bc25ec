"""`meshward manifest generate`: what it ships, and the API server accepting it as is."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from ca.dev_certs import write_dev_certs
from ca.kube.rbac import cluster_role
from meshward.install.manifests import generate
from meshward.install.values import parse_values
from meshward_common.errors import ConfigError


@pytest.fixture(scope="module")
def cacerts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import datetime as dt

    out = tmp_path_factory.mktemp("certs")
    write_dev_certs(out, "cluster.local", "cluster1", dt.datetime.now(dt.UTC))
    return out / "cluster1"


@pytest.fixture(scope="module")
def federation_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`federates-with` b.example, its initial bundle named relative to the file."""
    import datetime as dt

    out = tmp_path_factory.mktemp("federation")
    write_dev_certs(out / "b", "b.example", "cluster1", dt.datetime.now(dt.UTC))
    (out / "b.example.pem").write_bytes((out / "b/cluster1/root-cert.pem").read_bytes())
    (out / "federation.yaml").write_text(FEDERATION.format(bundle="b.example.pem"))
    return out / "federation.yaml"


FEDERATION = """federates-with:
  b.example:
    bundle-endpoint-url: https://bundle.b.example:8443/
    endpoint-spiffe-id: spiffe://b.example/meshward/control-plane
    trust-bundle: {bundle}
"""


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def test_everything_a_cluster_needs_in_apply_order(cacerts: Path) -> None:
    objects = generate(parse_values(["image=r.test/meshward:7", f"cacerts={cacerts}"]))
    kinds = [o["kind"] for o in objects]
    assert kinds[0] == "Namespace"
    crds = {
        o["metadata"]["name"]: [v["name"] for v in o["spec"]["versions"] if v["served"]]
        for o in by_kind(objects, "CustomResourceDefinition")
    }
    assert crds == {
        "authorizationpolicies.security.istio.io": ["v1", "v1beta1"],
        "peerauthentications.security.istio.io": ["v1", "v1beta1"],
        "serviceentries.networking.istio.io": ["v1", "v1beta1", "v1alpha3"],
    }
    assert kinds[-1] == "MutatingWebhookConfiguration"
    for kind in (
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "Secret",
        "Service",
        "Deployment",
        "DaemonSet",
    ):
        assert kind in kinds, kind
    # the control plane's ClusterRole is ca.kube.rbac's, exactly
    assert by_kind(objects, "ClusterRole") == [cluster_role()]
    secret = by_kind(objects, "Secret")[0]
    assert sorted(secret["data"]) == [
        "ca-cert.pem",
        "ca-key.pem",
        "cert-chain.pem",
        "root-cert.pem",
    ]
    service = by_kind(objects, "Service")[0]
    assert {(p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        (15012, 15012),
        (443, 15017),
    }
    images = {
        c["image"]
        for o in by_kind(objects, "Deployment") + by_kind(objects, "DaemonSet")
        for c in o["spec"]["template"]["spec"]["containers"]
    }
    assert images == {"r.test/meshward:7"}


def test_the_node_agents_get_the_socket_dir_and_a_projected_istio_ca_token() -> None:
    objects = generate(parse_values(["socketDir=/run/mw/agent"]))
    agent = by_kind(objects, "DaemonSet")[0]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in agent["volumes"]}
    assert volumes["agent-socket"]["hostPath"] == {
        "path": "/run/mw/agent",
        "type": "DirectoryOrCreate",
    }
    token = volumes["istio-token"]["projected"]["sources"][0]["serviceAccountToken"]
    assert token["audience"] == "istio-ca"
    assert agent["serviceAccountName"] == "meshward-node-agent"
    assert volumes["root-cert"]["configMap"] == {"name": "istio-ca-root-cert"}
    (container,) = agent["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    # the agent sees its socket dir where the sidecars do; every mount under /var/run/secrets
    assert mounts["agent-socket"] == "/var/run/secrets/workload-spiffe-uds"
    assert all(path.startswith("/var/run/secrets/") for path in mounts.values())
    args = container["args"]
    assert args[:3] == ["agent", "run", "--kubernetes"]
    flags = dict(zip(args[3::2], args[4::2], strict=True))
    assert flags == {
        "--node": "$(NODE_NAME)",
        "--ca-address": "meshward-control-plane.istio-system.svc:15012",
        "--socket": "/var/run/secrets/workload-spiffe-uds/socket",
        "--state-dir": mounts["state"],
        "--token-file": "/var/run/secrets/tokens/istio-token",
        "--trust-bundle": "/var/run/secrets/istio/root-cert.pem",
    }
    assert agent["hostNetwork"] is True


def test_an_external_control_plane_is_called_by_url_and_keeps_its_key(cacerts: Path) -> None:
    objects = generate(
        parse_values(
            [
                f"cacerts={cacerts}",
                "caAddress=127.0.0.1:15012",
                "injectionURL=https://localhost:15017/inject",
            ]
        )
    )
    kinds = [o["kind"] for o in objects]
    assert not {"Deployment", "Service", "Secret"} & set(kinds)
    roots = [
        o for o in by_kind(objects, "ConfigMap") if o["metadata"]["name"] == "istio-ca-root-cert"
    ]
    assert roots[0]["data"]["root-cert.pem"] == (cacerts / "root-cert.pem").read_text()
    for hook in by_kind(objects, "MutatingWebhookConfiguration")[0]["webhooks"]:
        assert hook["clientConfig"]["url"] == "https://localhost:15017/inject"
        assert "service" not in hook["clientConfig"]
    args = by_kind(objects, "DaemonSet")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--ca-address") + 1] == "127.0.0.1:15012"


def test_the_webhook_configuration_trusts_the_plugin_root_and_carries_the_failure_policy(
    cacerts: Path,
) -> None:
    objects = generate(parse_values([f"cacerts={cacerts}", "injector.failure_policy=Ignore"]))
    mwc = by_kind(objects, "MutatingWebhookConfiguration")[0]
    assert len(mwc["webhooks"]) == 4
    for hook in mwc["webhooks"]:
        assert (
            base64.b64decode(hook["clientConfig"]["caBundle"])
            == (cacerts / "root-cert.pem").read_bytes()
        )
        assert hook["clientConfig"]["service"] == {
            "name": "meshward-control-plane",
            "namespace": "istio-system",
            "path": "/inject",
            "port": 443,
        }
        assert hook["failurePolicy"] == "Ignore"
    (injector,) = [o for o in by_kind(objects, "ConfigMap") if "config" in o["data"]]
    config = yaml.safe_load(injector["data"]["config"])
    assert config["failure_policy"] == "Ignore"


def control_plane_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = by_kind(objects, "Deployment")
    container: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


def test_no_bundle_endpoint_or_federation_unless_asked() -> None:
    objects = generate(parse_values([]))
    container = control_plane_container(objects)
    assert "--bundle-endpoint-listen" not in container["args"]
    # The config file is there all the same, with no relationship: the CA follows it, so one
    # added later is an edit of the ConfigMap, not a new Deployment.
    args = container["args"]
    assert args[args.index("--config") + 1] == "/etc/meshward/ca-config/config.yaml"
    (config_map,) = [
        o for o in by_kind(objects, "ConfigMap") if o["metadata"]["name"] == "meshward-ca-config"
    ]
    assert yaml.safe_load(config_map["data"]["config.yaml"]) == {"federates-with": {}}
    assert [p["name"] for p in container["ports"]] == ["grpc-ca", "https-webhook"]
    assert [o["metadata"]["name"] for o in by_kind(objects, "Service")] == [
        "meshward-control-plane"
    ]


def test_the_bundle_endpoint_and_federation_reach_the_control_plane(
    federation_file: Path,
) -> None:
    objects = generate(
        parse_values(
            [
                "trustDomain=a.example",
                "bundleEndpoint.port=8443",
                "bundleEndpoint.serviceType=LoadBalancer",
                "bundleEndpoint.refreshHint=2m",
                f"federatesWith={federation_file}",
            ]
        )
    )
    container = control_plane_container(objects)
    args = container["args"]
    assert args[args.index("--bundle-endpoint-listen") + 1] == "0.0.0.0:8443"
    assert args[args.index("--bundle-endpoint-refresh-hint") + 1] == "2m"
    assert args[args.index("--config") + 1] == "/etc/meshward/ca-config/config.yaml"
    assert {"name": "https-bundle", "containerPort": 8443} in container["ports"]
    services = {o["metadata"]["name"]: o["spec"] for o in by_kind(objects, "Service")}
    bundle = services["meshward-bundle-endpoint"]
    assert bundle["type"] == "LoadBalancer"
    assert bundle["selector"] == {"app": "meshward-control-plane"}
    assert bundle["ports"] == [
        {"name": "https-bundle", "port": 8443, "targetPort": 8443, "protocol": "TCP"}
    ]
    # Only the bundle endpoint is exposed by that Service; 15012 and the webhook stay apart.
    assert {p["port"] for p in services["meshward-control-plane"]["ports"]} == {15012, 443}

    (config_map,) = [
        o for o in by_kind(objects, "ConfigMap") if o["metadata"]["name"] == "meshward-ca-config"
    ]
    assert yaml.safe_load(config_map["data"]["config.yaml"]) == {
        "federates-with": {
            "b.example": {
                "bundle-endpoint-url": "https://bundle.b.example:8443/",
                "endpoint-spiffe-id": "spiffe://b.example/meshward/control-plane",
                "trust-bundle": "/etc/meshward/ca-config/b.example.bundle",
            }
        }
    }
    assert (
        config_map["data"]["b.example.bundle"]
        == (federation_file.parent / "b.example.pem").read_text()
    )
    spec = by_kind(objects, "Deployment")[0]["spec"]["template"]["spec"]
    assert {"name": "ca-config", "configMap": {"name": "meshward-ca-config"}} in spec["volumes"]
    assert {
        "name": "ca-config",
        "mountPath": "/etc/meshward/ca-config",
        "readOnly": True,
    } in container["volumeMounts"]


def test_the_ca_reads_the_shipped_config_file_with_its_own_rules(
    federation_file: Path, tmp_path: Path
) -> None:
    """The ConfigMap, laid out as the kubelet mounts it, is a config file `ca serve` accepts."""
    from ca.config import build_config, read_config_file

    objects = generate(parse_values([f"federatesWith={federation_file}"]))
    (config_map,) = [
        o for o in by_kind(objects, "ConfigMap") if o["metadata"]["name"] == "meshward-ca-config"
    ]
    for key, text in config_map["data"].items():
        (tmp_path / key).write_text(
            text.replace("/etc/meshward/ca-config/", f"{tmp_path}/")
            if key == "config.yaml"
            else text
        )
    config = build_config(read_config_file(tmp_path / "config.yaml"))
    (peer,) = config.federates_with
    assert (peer.trust_domain, peer.url) == ("b.example", "https://bundle.b.example:8443/")
    assert peer.trust_bundle == tmp_path / "b.example.bundle"


def test_bad_federation_files_are_refused_in_one_line(
    tmp_path: Path, federation_file: Path
) -> None:
    bundle = federation_file.parent / "b.example.pem"
    cases = {
        "unknown.yaml": ("federates-with: {}\nlisten: 0.0.0.0:1\n", "federates-with only"),
        "own.yaml": (
            FEDERATION.replace("b.example:", "cluster.local:", 1).format(bundle=bundle),
            "that is this control plane's own trust domain",
        ),
        "nobundle.yaml": (FEDERATION.format(bundle="missing.pem"), "missing.pem is not a file"),
        "wrongtd.yaml": (
            FEDERATION.replace("b.example:", "c.example:", 1)
            .replace("spiffe://b.example", "spiffe://c.example")
            .format(bundle=bundle),
            "root names trust domain b.example, not c.example",
        ),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError, match=message) as caught:
            parse_values([f"federatesWith={tmp_path / name}"])
        assert str(caught.value).startswith(f"--set federatesWith: {tmp_path / name}")
        assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["imag=x"], "unknown setting"),
        (["image"], "expected key=value"),
        (["cacerts=/nonexistent"], "lacks ca-cert.pem"),
        (["injector.failure_policy=Maybe"], "failure_policy"),
        (["trustDomain=Not A Domain"], "trustDomain"),
        (["caAddress=nowhere"], "caAddress"),
        (["injectionURL=http://x/inject"], "not an https:// URL"),
        (["bundleEndpoint.port=0"], "bundleEndpoint.port: '0' is not a port"),
        (["bundleEndpoint.port=8443", "bundleEndpoint.serviceType=Ingress"], "serviceType"),
        (["bundleEndpoint.port=8443", "bundleEndpoint.refreshHint=5"], "refreshHint"),
        (["bundleEndpoint.serviceType=NodePort"], "give bundleEndpoint.port"),
        (["federatesWith=/nonexistent.yaml"], "federatesWith: /nonexistent.yaml"),
        (
            ["injectionURL=https://x/inject", "bundleEndpoint.port=8443"],
            "configure its bundle endpoint and federation there",
        ),
    ],
)
def test_bad_settings_are_refused_by_name(sets: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_values(sets)


def test_the_command_prints_yaml_and_warns_without_cacerts() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "meshward", "manifest", "generate"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "no --set cacerts" in done.stderr
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    assert docs[0]["kind"] == "Namespace"


@pytest.mark.slow
def test_the_api_server_accepts_the_manifests_by_server_side_apply(
    kube_cluster: Any, cacerts: Path, federation_file: Path
) -> None:
    """Every object applied as `kubectl apply --server-side` would: the namespace and CRDs for
    real (shared by the session, harmless), the rest as a server-side dry run (validated and
    admitted in full, but a webhook configuration pointing at no control plane never lands in
    the cluster the other tests share)."""
    from kubernetes import dynamic

    from tests.harness.kube import admin_client

    api = admin_client(kube_cluster)
    try:
        client = dynamic.DynamicClient(api)
        sets = [
            f"cacerts={cacerts}",
            "bundleEndpoint.port=8443",
            "bundleEndpoint.serviceType=NodePort",
            f"federatesWith={federation_file}",
        ]
        for obj in generate(parse_values(sets)):
            resource = client.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
            real = obj["kind"] in ("Namespace", "CustomResourceDefinition")
            kwargs: dict[str, Any] = {"field_manager": "meshward-test", "force_conflicts": True}
            if not real:
                kwargs["dry_run"] = "All"
            namespace = obj["metadata"].get("namespace")
            applied = resource.server_side_apply(body=obj, namespace=namespace, **kwargs)
            assert applied.metadata.name == obj["metadata"]["name"], obj["kind"]
            if obj["kind"] == "CustomResourceDefinition":
                from tests.harness.kube import wait_for

                wait_for(
                    f"CRD {obj['metadata']['name']} established",
                    lambda r=resource, n=obj["metadata"]["name"]: any(
                        c.type == "Established" and c.status == "True"
                        for c in (r.get(name=n).status.conditions or [])
                    ),
                )
    finally:
        api.close()
