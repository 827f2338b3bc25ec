"""The control plane's API client against the real API server: in-cluster config (what a pod of
the control plane's Deployment has), and a real 410 Gone from the API server's watch cache."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ca.kube.api import PODS, Gone, connect
from ca.kube.watch import Reflector
from meshward.kube.cluster import SA_ISSUER
from meshward_common.errors import ConfigError
from tests.harness.kube import Kube, compact_etcd, control_plane_account

pytestmark = pytest.mark.slow


def service_account_dir(kube: Kube, tmp_path: Path) -> tuple[Path, str]:
    """What the kubelet mounts at /var/run/secrets/kubernetes.io/serviceaccount for the control
    plane's pod: a token of its service account (bound to the shipped ClusterRole) and the
    cluster's CA; and the namespace."""
    ns = control_plane_account(kube)
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    token = kube.token(ns, "meshward-control-plane", audience=SA_ISSUER, seconds=3600)
    fd = os.open(sa / "token", os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token)
    (sa / "ca.crt").write_bytes((kube.cluster.pki / "ca.crt").read_bytes())
    return sa, ns


def in_cluster_env(kube: Kube) -> dict[str, str]:
    return {
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        "KUBERNETES_SERVICE_PORT": str(kube.cluster.api_port),
    }


async def test_in_cluster_config_reaches_the_api_as_the_pods_service_account(
    kube: Kube, tmp_path: Path
) -> None:
    sa, ns = service_account_dir(kube, tmp_path)
    node = kube.node()
    await asyncio.to_thread(kube.service_account, ns, "app")
    await asyncio.to_thread(kube.pod, ns, "app-1", service_account="app", node=node)
    api = await connect(None, service_account_dir=sa, environ=in_cluster_env(kube))
    try:
        assert api.server == kube.cluster.server
        pods, version = await api.list_all(PODS)
        assert f"{ns}/app-1" in pods
        assert version
        # The token is the service account's, not an admin's: what the ClusterRole does not
        # grant is forbidden.
        with pytest.raises(Exception, match="403"):
            await api.get(f"/api/v1/namespaces/{ns}/secrets")
    finally:
        await api.close()


@pytest.mark.parametrize(
    ("env", "files", "says"),
    [
        ({}, ("token", "ca.crt"), "Service host/port is not set"),
        ({"KUBERNETES_SERVICE_HOST": "", "KUBERNETES_SERVICE_PORT": "443"}, ("token", "ca.crt"),
         "set but empty"),
        ({"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}, ("ca.crt",),
         "token file does not exist"),
        ({"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}, ("token",),
         "certification file does not exist"),
    ],
)  # fmt: skip
async def test_in_cluster_config_outside_a_pod_is_one_clear_line(
    tmp_path: Path, env: dict[str, str], files: tuple[str, ...], says: str
) -> None:
    for name in files:
        (tmp_path / name).write_text("x")
    with pytest.raises(ConfigError) as info:
        await connect(None, service_account_dir=tmp_path, environ=env)
    message = str(info.value)
    assert says in message
    assert "in-cluster config" in message
    assert "--kubeconfig" in message
    assert "\n" not in message


async def test_a_version_etcd_compacted_away_is_gone_and_relisted(kube: Kube) -> None:
    """The reflector was away while the API server restarted (its watch cache starts afresh) and
    etcd compacted its history: the version it resumes from is gone, the real API server answers
    410 Gone, and the reflector lists again, missing nothing."""
    api = await connect(kube.cluster.kubeconfig)
    ns = await asyncio.to_thread(kube.namespace, "gone")
    node = kube.node()
    await asyncio.to_thread(kube.service_account, ns, "sa")
    reflector = Reflector(api, PODS, lambda: None)
    task = asyncio.create_task(reflector.run())
    try:
        await asyncio.wait_for(reflector.synced.wait(), 60)
        await asyncio.to_thread(kube.cluster.stop_apiserver)
        try:
            await asyncio.to_thread(compact_etcd, kube.cluster)
        finally:
            await asyncio.to_thread(kube.cluster.start_apiserver)
        await asyncio.to_thread(kube.pod, ns, "after", service_account="sa", node=node)
        for _ in range(1200):
            if f"{ns}/after" in reflector.objects and reflector.relists:
                break
            await asyncio.sleep(0.1)
        assert f"{ns}/after" in reflector.objects
        assert reflector.relists == 1, "resumed without a 410, or relisted more than once"

        # And straight from the API: a watch from before the compaction.
        with pytest.raises(Gone, match="410"):
            await asyncio.wait_for(_drain(api.watch(PODS, "1")), 60)
    finally:
        task.cancel()
        await api.close()


async def _drain(events: AsyncIterator[object]) -> None:
    async for _ in events:
        pass
