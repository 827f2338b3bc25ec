"""PeerAuthentication resolution: mesh < namespace < workload < port; UNSET inherits."""

from __future__ import annotations

import pytest

from policy import parse_text
from policy.model import PeerAuthentication
from policy.peer_auth import resolve_mtls


def _pa(name: str, namespace: str, mode: str | None, selector: str = "", ports: str = "") -> str:
    spec = ""
    if selector:
        spec += f"  selector:\n    matchLabels:\n      app: {selector}\n"
    if mode:
        spec += f"  mtls:\n    mode: {mode}\n"
    if ports:
        spec += "  portLevelMtls:\n" + "".join(
            f"    {p}:\n      mode: {m}\n" for p, m in (x.split("=") for x in ports.split(","))
        )
    body = f"spec:\n{spec}" if spec else "spec: {}\n"
    return f"apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: {name}\n  namespace: {namespace}\n{body}"


def _load(*docs: str) -> list[PeerAuthentication]:
    out = []
    for d in docs:
        for r in parse_text(d, "pa.yaml"):
            assert isinstance(r, PeerAuthentication)
            out.append(r)
    return out


MESH_STRICT = _pa("default", "istio-system", "STRICT")
NS_PERMISSIVE = _pa("default", "foo", "PERMISSIVE")
NS_UNSET = _pa("default", "foo", None)
WL_DISABLE = _pa("httpbin", "foo", "DISABLE", selector="httpbin")
WL_PORTS = _pa(
    "httpbin-ports",
    "foo",
    "UNSET",
    selector="httpbin",
    ports="8080=DISABLE,9000=UNSET,9001=PERMISSIVE",
)

# (id, documents, labels, port, expected)
CASES: list[tuple[str, list[str], dict[str, str], int, str]] = [
    ("nothing set: caller's default", [], {"app": "httpbin"}, 80, "PERMISSIVE"),
    ("mesh-wide STRICT", [MESH_STRICT], {"app": "httpbin"}, 80, "STRICT"),
    (
        "namespace overrides mesh",
        [MESH_STRICT, NS_PERMISSIVE],
        {"app": "httpbin"},
        80,
        "PERMISSIVE",
    ),
    ("namespace UNSET inherits mesh", [MESH_STRICT, NS_UNSET], {"app": "x"}, 80, "STRICT"),
    (
        "workload overrides namespace",
        [MESH_STRICT, NS_PERMISSIVE, WL_DISABLE],
        {"app": "httpbin"},
        80,
        "DISABLE",
    ),
    ("workload selector must match", [MESH_STRICT, WL_DISABLE], {"app": "other"}, 80, "STRICT"),
    ("port-level overrides workload", [MESH_STRICT, WL_PORTS], {"app": "httpbin"}, 8080, "DISABLE"),
    (
        "port-level other port inherits",
        [MESH_STRICT, NS_PERMISSIVE, WL_PORTS],
        {"app": "httpbin"},
        80,
        "PERMISSIVE",
    ),
    ("port-level UNSET inherits", [MESH_STRICT, WL_PORTS], {"app": "httpbin"}, 9000, "STRICT"),
    ("port-level PERMISSIVE", [MESH_STRICT, WL_PORTS], {"app": "httpbin"}, 9001, "PERMISSIVE"),
    (
        "other namespace's policy does not apply",
        [_pa("default", "bar", "DISABLE")],
        {"app": "httpbin"},
        80,
        "PERMISSIVE",
    ),
]


@pytest.mark.parametrize(
    ("docs", "labels", "port", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_mtls_mode_resolution(
    docs: list[str], labels: dict[str, str], port: int, expected: str
) -> None:
    assert resolve_mtls(_load(*docs), "foo", labels, port, "istio-system") == expected


def test_default_is_the_callers_choice() -> None:
    assert resolve_mtls([], "foo", {}, 80, "istio-system", default="STRICT") == "STRICT"
    assert (
        resolve_mtls(_load(NS_PERMISSIVE), "foo", {}, 80, "istio-system", default="STRICT")
        == "PERMISSIVE"
    )


def test_root_namespace_policy_with_selector_is_ignored_as_in_istio() -> None:
    docs = _load(_pa("sel", "istio-system", "DISABLE", selector="httpbin"), MESH_STRICT)
    assert resolve_mtls(docs, "istio-system", {"app": "httpbin"}, 80, "istio-system") == "STRICT"
    assert resolve_mtls(docs, "foo", {"app": "httpbin"}, 80, "istio-system") == "STRICT"


def test_root_namespace_is_configurable() -> None:
    docs = _load(_pa("default", "mesh-root", "DISABLE"))
    assert resolve_mtls(docs, "foo", {}, 80, "mesh-root") == "DISABLE"
    assert resolve_mtls(docs, "foo", {}, 80, "istio-system") == "PERMISSIVE"
