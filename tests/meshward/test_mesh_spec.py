"""The mesh spec: names, IPs, nodes, the registry written for the CA, and the argv of each part."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshward.mesh import components as cmd
from meshward.mesh.layout import StateLayout, load_options, save_options
from meshward.mesh.spec import MeshOptions, build_spec, registry_yaml
from meshward_common.errors import ConfigError
from meshward_common.registry import parse_registry


def test_pods_spread_over_both_nodes_with_own_service_accounts():
    spec = build_spec(MeshOptions(prefix="mwup", subnet="10.213.96.0/24"))
    assert [p.name for p in spec.pods] == [
        "productpage",
        "details",
        "reviews-v1",
        "reviews-v2",
        "ratings",
    ]
    assert {p.node for p in spec.pods} == {"node-1", "node-2"}
    assert {p.node for p in spec.pods if p.service == "reviews"} == {"node-1", "node-2"}
    assert spec.pod("reviews-v2").service_account == "bookinfo-reviews"
    assert spec.pod("details").netns == "mwup-details"
    assert spec.bridge_ip == "10.213.96.1"
    assert all(p.ip.startswith("10.213.96.") for p in spec.pods)
    assert len({p.ip for p in spec.pods}) == 5
    assert spec.hosts()["reviews"] == [spec.pod("reviews-v1").ip, spec.pod("reviews-v2").ip]


def test_registry_yaml_is_a_valid_registry_with_netns_selectors():
    spec = build_spec(MeshOptions(prefix="mwup", subnet="10.213.96.0/24", ingress_uid=1338))
    registry = parse_registry(registry_yaml(spec), "registry.yaml")
    assert registry.trust_domain == "cluster.local"
    by_name = {w.name: w for w in registry.workloads}
    assert by_name["ratings"].selector.netns == "mwup-ratings"
    assert by_name["ratings"].selector.uids == (1337,)
    assert by_name["ratings"].address == spec.pod("ratings").ip
    assert by_name["ratings"].ports == (9080, 9090)  # HTTP and the gRPC service reviews calls
    assert by_name["reviews-v1"].ports == (9080,)
    assert by_name["reviews-v2"].labels == {"app": "reviews", "version": "v2"}
    ingress = by_name["ingress"]
    assert (ingress.selector.netns, ingress.selector.uids) == ("host", (1338,))
    assert str(ingress.spiffe_id("cluster.local")) == spec.ingress_id()
    assert spec.ingress_id() == "spiffe://cluster.local/ns/istio-system/sa/meshward-ingress"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prefix": "MW"}, "prefix 'MW'"),
        ({"prefix": "toolongprefix"}, "prefix 'toolongprefix'"),
        ({"subnet": "10.213.0.0/28"}, "room for 30 hosts"),
        ({"subnet": "nonsense"}, "not a network"),
        ({"ingress_port": 0}, "port 0"),
        ({"app_uid": 1337}, "neither root nor the sidecar uid"),
        ({"ingress_uid": 0}, "neither root nor the sidecar uid"),
    ],
)
def test_bad_options_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        MeshOptions(**kwargs)


def test_unknown_pod_names_the_known_ones():
    spec = build_spec(MeshOptions())
    with pytest.raises(ConfigError, match=r"no pod named .shop.*productpage"):
        spec.pod("shop")


def test_options_round_trip_through_the_state_dir(tmp_path: Path):
    layout = StateLayout(tmp_path)
    assert load_options(layout) is None
    layout.make()
    options = MeshOptions(
        prefix="mwup", subnet="10.213.96.0/24", state_dir=tmp_path, ingress_port=18080
    )
    save_options(layout, options)
    assert load_options(layout) == options


def test_corrupt_state_is_a_config_error(tmp_path: Path):
    layout = StateLayout(tmp_path)
    layout.make()
    layout.options_file.write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable mesh state"):
        load_options(layout)


def test_sidecars_run_in_their_pod_as_1337_and_apps_as_the_app_user(tmp_path: Path):
    spec = build_spec(MeshOptions(prefix="mwup", subnet="10.213.96.0/24", state_dir=tmp_path))
    layout = StateLayout(tmp_path)
    sidecar = cmd.sidecar_argv(spec, layout, "reviews-v2", None)
    assert sidecar[:4] == ["ip", "netns", "exec", "mwup-reviews-v2"]
    assert sidecar[4:8] == ["setpriv", "--reuid", "1337", "--regid"]
    assert "--agent-socket" in sidecar
    assert sidecar[sidecar.index("--agent-socket") + 1] == str(tmp_path / "agents" / "node-2.sock")
    assert sidecar[sidecar.index("--pod-ip") + 1] == spec.pod("reviews-v2").ip
    assert "--otlp-endpoint" not in sidecar
    app = cmd.app_argv(spec, "reviews-v2")
    assert app[:7] == ["ip", "netns", "exec", "mwup-reviews-v2", "setpriv", "--reuid", "1000"]
    assert app[-7:] == ["reviews", "--version", "v2", "--port", "9080", "--pod", "reviews-v2"]
    ingress = cmd.ingress_argv(spec, layout, cmd.JaegerPorts(4318, 16686, 16685))
    assert ingress[:3] == ["setpriv", "--reuid", "1338"]
    assert ingress[ingress.index("--route") + 1] == f"{spec.productpage.ip}:9080"
    assert ingress[ingress.index("--otlp-endpoint") + 1] == "http://10.213.96.1:4318"


def test_components_start_in_dependency_order():
    spec = build_spec(MeshOptions())
    names = [c.name for c in cmd.components(spec, jaeger=True)]
    assert names[:4] == ["jaeger", "control-plane", "agent-node-1", "agent-node-2"]
    assert names[-1] == "ingress"
    assert names.index("sidecar-ratings") < names.index("app-ratings")
    assert "jaeger" not in [c.name for c in cmd.components(spec, jaeger=False)]
