"""The Kubernetes mesh source's judging: policy objects go through the policy files' bounded
parse, a change that would make the mesh state exceed its bound is refused at its source with the
last good version kept, a refused version is not parsed again, and the judging runs off the event
loop. Most tests set objects in its reflectors; the last one watches a real API server (the
control plane's other behaviour there is in tests/ca/test_kube_control_plane.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import ca.kube.mesh as kube_mesh
from ca.kube import REFUSED_FILE
from ca.kube.api import connect
from ca.kube.mesh import KubeMeshStateSource, policy_document
from ca.mesh_state import base_size, build_mesh_state, policy_entry_size
from meshward_common.limits import MESH_STATE_MAX_BYTES
from meshward_common.registry import Registry
from tests.harness.kube import Kube, install_istio_crds

TD = "cluster.local"
OVER = "the mesh state would exceed {} bytes with it (the mesh state's bound, MESH_STATE_MAX_BYTES)"


def policy(name: str, principals: int = 1, action: str = "DENY") -> dict[str, Any]:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": "app", "resourceVersion": "1"},
        "spec": {
            "action": action,
            "rules": [
                {
                    "from": [
                        {
                            "source": {
                                "principals": [f"{TD}/ns/x/sa/c{i}" for i in range(principals)]
                            }
                        }
                    ]
                }
            ],
        },
    }


def pod(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "app", "uid": f"uid-{name}"},
        "spec": {"nodeName": "node-a", "serviceAccountName": "sa"},
        "status": {"phase": "Running", "podIP": "10.0.0.1"},
    }


def source(max_state_bytes: int = MESH_STATE_MAX_BYTES) -> KubeMeshStateSource:
    return KubeMeshStateSource(object(), TD, max_state_bytes=max_state_bytes)  # type: ignore[arg-type]


def put(src: KubeMeshStateSource, *objects: dict[str, Any]) -> None:
    for obj in objects:
        src.reflectors[obj.get("kind", "Pod")].objects[
            f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"
        ] = obj


def remove(src: KubeMeshStateSource, kind: str, name: str) -> None:
    del src.reflectors[kind].objects[f"app/{name}"]


def served(src: KubeMeshStateSource) -> dict[str, str]:
    return {p.source: p.yaml for p in src.state.policies}


def size_with(*objects: dict[str, Any]) -> int:
    """The state's size with these policies and no workloads."""
    return base_size(Registry(), TD, "istio-system", {}) + sum(
        policy_entry_size(f"AuthorizationPolicy/app/{o['metadata']['name']}", policy_document(o))
        for o in objects
    )


async def test_a_policy_change_over_the_state_bound_is_refused_naming_its_object(
    caplog: pytest.LogCaptureFixture,
) -> None:
    a, b, c = policy("a", 40), policy("b", 40), policy("c", 40)
    bound = size_with(a, b, c) - 1  # two fit, not three
    src = source(bound)
    put(src, a, b)
    await src.refresh()
    assert sorted(served(src)) == ["AuthorizationPolicy/app/a", "AuthorizationPolicy/app/b"]
    with caplog.at_level(logging.ERROR):
        put(src, c)
        assert not await src.refresh()
    why = f"AuthorizationPolicy/app/c:1: object: {OVER.format(bound)}"
    assert [r.getMessage() for r in caplog.records] == [
        f"policy refused, keeping the last good version: {why}"
    ]
    assert src.refused == {"AuthorizationPolicy/app/c": why}
    assert src.state.ByteSize() <= bound

    # An edit that grows a served policy over the bound keeps its last good version in force.
    a_text = served(src)["AuthorizationPolicy/app/a"]
    put(src, policy("a", 400))
    await src.refresh()
    assert served(src)["AuthorizationPolicy/app/a"] == a_text
    assert set(src.refused) == {"AuthorizationPolicy/app/a", "AuthorizationPolicy/app/c"}

    # Room made (b deleted): a refused version stays refused; the next change to it is taken.
    caplog.clear()
    remove(src, "AuthorizationPolicy", "b")
    await src.refresh()
    assert sorted(served(src)) == ["AuthorizationPolicy/app/a"]
    assert caplog.records == []  # not judged again
    put(src, policy("c", 39))
    await src.refresh()
    assert sorted(served(src)) == ["AuthorizationPolicy/app/a", "AuthorizationPolicy/app/c"]
    assert set(src.refused) == {"AuthorizationPolicy/app/a"}
    # Deleting a refused object clears its refusal.
    remove(src, "AuthorizationPolicy", "a")
    await src.refresh()
    assert src.refused == {}
    assert sorted(served(src)) == ["AuthorizationPolicy/app/c"]


async def test_pods_that_would_cross_the_bound_leave_the_last_good_registry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    one = build_mesh_state(Registry(), {}, TD, "istio-system").ByteSize()
    src = source(one + 400)  # room for about two workloads
    put(src, pod("p0"))
    await src.refresh()
    assert [w.name for w in src.state.workloads] == ["p0"]
    with caplog.at_level(logging.ERROR):
        put(src, *(pod(f"p{i}") for i in range(1, 20)))
        assert not await src.refresh()
        await src.refresh()  # logged once for the same registry
    assert [w.name for w in src.state.workloads] == ["p0"]
    assert [r.getMessage() for r in caplog.records] == [
        "Pods refused, keeping the last good registry (1 workloads): 20 workloads: "
        + OVER.format(one + 400)
    ]
    for i in range(2, 20):
        remove(src, "Pod", f"p{i}")
    assert await src.refresh()
    assert [w.name for w in src.state.workloads] == ["p0", "p1"]


async def test_policy_objects_get_the_policy_files_bounds_and_one_line_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    src = source()
    huge = policy("huge", 30_000)  # ~1.3 MB of YAML: over the per-file bound
    put(src, policy("good"), huge, policy("typo", action="DENYY"))
    with caplog.at_level(logging.ERROR):
        await src.refresh()
    assert sorted(served(src)) == ["AuthorizationPolicy/app/good"]
    assert src.refused == {
        "AuthorizationPolicy/app/huge": "AuthorizationPolicy/app/huge:1: yaml: larger than "
        "1048576 bytes (the limit for policy files)",
        "AuthorizationPolicy/app/typo": "AuthorizationPolicy/app/typo:7: spec.action: 'DENYY' "
        "is not ALLOW, DENY or AUDIT",
    }
    lines = sorted(r.getMessage() for r in caplog.records)
    assert lines == sorted(
        f"policy refused, keeping the last good version: {why}" for why in src.refused.values()
    )


async def test_a_refused_version_is_not_parsed_again(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[str] = []
    real = kube_mesh.parse_text

    def counting(text: str, where: str) -> Any:
        parsed.append(where)
        return real(text, where)

    monkeypatch.setattr(kube_mesh, "parse_text", counting)
    src = source()
    put(src, policy("good"), policy("typo", action="DENYY"))
    await src.refresh()
    for i in range(5):  # every Pod event rebuilds the state
        put(src, pod(f"p{i}"))
        await src.refresh()
    assert sorted(parsed) == ["AuthorizationPolicy/app/good", "AuthorizationPolicy/app/typo"]


async def test_objects_are_judged_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    # A parse that only ends when the event loop runs something else: it does iff the judging is
    # not on the loop (the supervisor keeps serving while a large policy object is parsed).
    entered, release = threading.Event(), threading.Event()
    released_in_time: list[bool] = []
    real = kube_mesh.parse_text

    def slow(text: str, where: str) -> Any:
        entered.set()
        released_in_time.append(release.wait(30))
        return real(text, where)

    monkeypatch.setattr(kube_mesh, "parse_text", slow)
    src = source()
    put(src, policy("a"))
    judging = asyncio.create_task(src.refresh())
    for _ in range(3000):
        if entered.is_set():
            break
        await asyncio.sleep(0.01)
    release.set()
    assert await judging
    assert released_in_time == [True]
    assert sorted(served(src)) == ["AuthorizationPolicy/app/a"]


async def eventually(what: str, check: Callable[[], Any], within_s: float = 90.0) -> Any:
    """`check()` once truthy, polled without blocking the event loop the watches run on."""
    deadline = time.monotonic() + within_s
    last: Any = None
    while time.monotonic() < deadline:
        if last := check():
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {within_s:.0f}s waiting for {what} (last: {last!r})")


@pytest.mark.slow
async def test_against_the_api_server_an_object_over_the_bound_is_refused_and_reported(
    kube: Kube, tmp_path: Path
) -> None:
    await asyncio.to_thread(install_istio_crds, kube.api)
    ns = await asyncio.to_thread(kube.namespace, "bound")

    def create(obj: dict[str, Any]) -> None:
        kube.custom.create_namespaced_custom_object(
            "security.istio.io", "v1", ns, "authorizationpolicies",
            {**obj, "metadata": {"name": obj["metadata"]["name"]}},
        )  # fmt: skip

    def replace_spec(obj: dict[str, Any]) -> None:
        kube.custom.patch_namespaced_custom_object(
            "security.istio.io", "v1", ns, "authorizationpolicies", obj["metadata"]["name"],
            {"spec": obj["spec"]},
        )  # fmt: skip

    def delete(name: str) -> None:
        kube.custom.delete_namespaced_custom_object(
            "security.istio.io", "v1", ns, "authorizationpolicies", name
        )

    src = KubeMeshStateSource(await connect(kube.cluster.kubeconfig), TD, state_dir=tmp_path)
    await src.start()
    watching = asyncio.create_task(src.watch())
    try:
        # Room for the small policy and a little more, whatever else the cluster holds.
        src.max_state_bytes = bound = src.state.ByteSize() + 2000
        small, big = f"AuthorizationPolicy/{ns}/small", f"AuthorizationPolicy/{ns}/big"
        await asyncio.to_thread(create, policy("small", 2))
        await eventually("the small policy served", lambda: small in served(src))
        small_text = served(src)[small]

        await asyncio.to_thread(create, policy("big", 100))  # ~4 KB of principals
        refused_file = tmp_path / REFUSED_FILE
        why = f"{big}:1: object: {OVER.format(bound)}"
        await eventually(
            "the big policy refused and reported",
            lambda: json.loads(refused_file.read_text()).get(big) == why,
        )
        assert big not in served(src)
        assert src.state.ByteSize() <= bound

        # The small one edited past the bound: its last good version stays in force.
        await asyncio.to_thread(replace_spec, policy("small", 100))
        await eventually("the edit refused", lambda: small in src.refused)
        assert served(src)[small] == small_text
        assert src.refused[small] == f"{small}:1: object: {OVER.format(bound)}"

        # Deleting the refused object clears its report.
        await asyncio.to_thread(delete, "big")
        await eventually(
            "the refusal cleared", lambda: big not in json.loads(refused_file.read_text())
        )
        # (Other tests' namespaces may still be terminating: only this one's objects count.)
        assert [k for k in sorted(json.loads(refused_file.read_text())) if f"/{ns}/" in k] == [
            small
        ]
    finally:
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching
        await src.stop()


# -- ServiceEntries (networking.istio.io): the --service-entry-dir files' rules ---------------


def service_entry(name: str, address: str = "10.213.1.7", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": name, "namespace": "app", "resourceVersion": "1"},
        "spec": {
            "hosts": [f"{name}.b.example"],
            "location": "MESH_INTERNAL",
            "resolution": "STATIC",
            "ports": [{"number": 9080, "name": "http", "protocol": "HTTP"}],
            "endpoints": [{"address": address}],
            "subjectAltNames": [f"spiffe://b.example/ns/default/sa/{name}"],
            **spec,
        },
    }


def entries(src: KubeMeshStateSource) -> dict[str, tuple[list[str], list[str]]]:
    return {e.name: (list(e.hosts), list(e.endpoints)) for e in src.state.service_entries}


async def test_service_entry_objects_get_the_files_rules_one_line_each_last_good_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    src = source()
    put(src, service_entry("ratings"), service_entry("vip", addresses=["240.0.0.1"]))
    with caplog.at_level(logging.ERROR):
        assert await src.refresh()
    assert entries(src) == {"ratings": (["ratings.b.example"], ["10.213.1.7"])}
    (entry,) = src.state.service_entries
    assert (entry.namespace, list(entry.ports), list(entry.subject_alt_names)) == (
        "app", [9080], ["spiffe://b.example/ns/default/sa/ratings"],
    )  # fmt: skip
    vip = (
        "ServiceEntry/app/vip:19: spec.addresses: VIPs are not supported: the app calls the "
        "endpoints' addresses"
    )
    assert src.refused == {"ServiceEntry/app/vip": vip}
    assert [r.getMessage() for r in caplog.records] == [
        f"ServiceEntry refused, keeping the last good version: {vip}"
    ]

    # A bad edit of a served entry: one line, its last good version stays in force.
    caplog.clear()
    put(src, service_entry("ratings", address="not-an-ip"))
    with caplog.at_level(logging.ERROR):
        assert not await src.refresh()
        put(src, pod("p0"))  # other changes do not judge it again
        await src.refresh()
    why = "ServiceEntry/app/ratings:16: spec.endpoints.address: 'not-an-ip' is not an IP address"
    assert [r.getMessage() for r in caplog.records] == [
        f"ServiceEntry refused, keeping the last good version: {why}"
    ]
    assert entries(src)["ratings"] == (["ratings.b.example"], ["10.213.1.7"])
    assert src.refused["ServiceEntry/app/ratings"] == why

    # Fixed: the new version is served; deleting an object takes its entry and its refusal away.
    put(src, service_entry("ratings", address="10.213.1.8"))
    assert await src.refresh()
    assert entries(src)["ratings"] == (["ratings.b.example"], ["10.213.1.8"])
    remove(src, "ServiceEntry", "vip")
    remove(src, "ServiceEntry", "ratings")
    assert await src.refresh()
    assert entries(src) == {}
    assert src.refused == {}


async def test_a_service_entry_over_the_state_bound_is_refused_naming_its_object(
    caplog: pytest.LogCaptureFixture,
) -> None:
    src = source()
    put(src, service_entry("small"))
    await src.refresh()
    src.max_state_bytes = bound = src.state.ByteSize() + 100
    many = [f"10.213.2.{i}" for i in range(1, 60)]
    big = service_entry("big")
    big["spec"]["endpoints"] = [{"address": a} for a in many]
    put(src, big)
    with caplog.at_level(logging.ERROR):
        assert not await src.refresh()
    why = f"ServiceEntry/app/big:1: object: {OVER.format(bound)}"
    assert src.refused == {"ServiceEntry/app/big": why}
    assert [r.getMessage() for r in caplog.records] == [
        f"ServiceEntry refused, keeping the last good version: {why}"
    ]
    assert sorted(entries(src)) == ["small"]
    assert src.state.ByteSize() <= bound


@pytest.mark.slow
async def test_against_the_api_server_service_entries_are_watched_in_every_served_version(
    kube: Kube, tmp_path: Path
) -> None:
    await asyncio.to_thread(install_istio_crds, kube.api)
    ns = await asyncio.to_thread(kube.namespace, "se")

    def create(obj: dict[str, Any], version: str) -> None:
        kube.custom.create_namespaced_custom_object(
            "networking.istio.io", version, ns, "serviceentries",
            {**obj, "apiVersion": f"networking.istio.io/{version}",
             "metadata": {"name": obj["metadata"]["name"]}},
        )  # fmt: skip

    def patch_spec(name: str, spec: dict[str, Any]) -> None:
        kube.custom.patch_namespaced_custom_object(
            "networking.istio.io", "v1", ns, "serviceentries", name, {"spec": spec}
        )

    src = KubeMeshStateSource(await connect(kube.cluster.kubeconfig), TD, state_dir=tmp_path)
    await src.start()
    watching = asyncio.create_task(src.watch())

    def mine() -> dict[str, list[str]]:
        return {e.name: list(e.endpoints) for e in src.state.service_entries if e.namespace == ns}

    try:
        # Users' YAML of each version Istio serves applies unchanged and is served alike.
        for name, version in (("ratings", "v1"), ("details", "v1beta1"), ("reviews", "v1alpha3")):
            await asyncio.to_thread(create, service_entry(name), version)
        await eventually("the three entries served", lambda: len(mine()) == 3)
        assert mine() == {n: ["10.213.1.7"] for n in ("ratings", "details", "reviews")}

        # Istio's schema takes `addresses`; our rules refuse it: one line, the last good kept.
        await asyncio.to_thread(patch_spec, "ratings", {"addresses": ["240.0.0.1"]})
        refused_file = tmp_path / REFUSED_FILE
        source_name = f"ServiceEntry/{ns}/ratings"
        why = await eventually(
            "the edit refused and reported",
            lambda: json.loads(refused_file.read_text()).get(source_name),
        )
        where, _, reason = why.partition(": ")
        assert where.startswith(f"{source_name}:")  # and the line in the object's YAML
        assert (
            reason
            == "spec.addresses: VIPs are not supported: the app calls the endpoints' addresses"
        )
        assert mine()["ratings"] == ["10.213.1.7"]

        # The API server refuses what is not Istio's shape, before we see it.
        bad = service_entry("typo", location="MESH_INTERN")
        with pytest.raises(Exception, match="Unsupported value"):
            await asyncio.to_thread(create, bad, "v1")

        await asyncio.to_thread(
            kube.custom.delete_namespaced_custom_object,
            "networking.istio.io", "v1", ns, "serviceentries", "ratings",
        )  # fmt: skip
        await eventually("the deleted entry gone", lambda: "ratings" not in mine())
        assert source_name not in json.loads(refused_file.read_text())
    finally:
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching
        await src.stop()
