"""The files of a Pod's volumes on the node, as the kubelet's volume plugins write them.

hostPath (a directory under the node's own root: `DirectoryOrCreate` makes it, `Directory` waits
for it), emptyDir, configMap and projected volumes (serviceAccountToken from the TokenRequest API,
bound to the Pod as the kubelet asks for it; configMap; downwardAPI fieldRefs). Files are written
atomically; tokens 0600, owned by the container user that mounts them (the kubelet's rule when the
Pod says who runs it). ConfigMaps and tokens are written once, when the Pod starts: this runner
does not refresh them (a real kubelet does, before 80 % of a token's life).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ca.kube.api import KubeApi, KubeApiError
from meshward.kube.pod_plan import Unsupported, VolumePlan, field_value
from meshward_common.errors import MeshwardError

TOKEN_SECONDS_DEFAULT = 3600


class NotYet(MeshwardError):
    """A volume cannot be made yet (its ConfigMap or host directory does not exist): retried,
    and the reason is the container's waiting message meanwhile."""


def _write(path: Path, data: bytes, mode: int, owner: int | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    if owner is not None:
        os.chown(tmp, owner, owner)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _relative(path: str, where: str) -> str:
    parts = [p for p in path.split("/") if p]
    if not parts or path.startswith("/") or ".." in parts:
        raise Unsupported(f"{where}: path {path!r} must be relative, without '..'")
    return "/".join(parts)


async def _config_map(
    api: KubeApi, namespace: str, source: Mapping[str, Any], where: str
) -> dict[str, str]:
    name = str(source.get("name", ""))
    obj = await api.get(f"/api/v1/namespaces/{namespace}/configmaps/{name}")
    if obj is None:
        if source.get("optional"):
            return {}
        raise NotYet(f"{where}: configmap {namespace}/{name} not found")
    data = {str(k): str(v) for k, v in (obj.get("data") or {}).items()}
    items = source.get("items")
    if not items:
        return data
    out = {}
    for item in items:
        key = str(item.get("key", ""))
        if key not in data:
            if source.get("optional"):
                continue
            raise NotYet(f"{where}: configmap {namespace}/{name} has no key {key!r}")
        out[_relative(str(item.get("path", key)), where)] = data[key]
    return out


async def _token(
    api: KubeApi, pod: Mapping[str, Any], source: Mapping[str, Any], where: str
) -> str:
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    namespace = str(meta.get("namespace", ""))
    account = str(spec.get("serviceAccountName") or "default")
    body: dict[str, Any] = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {
            "expirationSeconds": int(source.get("expirationSeconds") or TOKEN_SECONDS_DEFAULT),
            "boundObjectRef": {
                "kind": "Pod",
                "apiVersion": "v1",
                "name": meta.get("name"),
                "uid": meta.get("uid"),
            },
        },
    }
    if source.get("audience"):
        body["spec"]["audiences"] = [str(source["audience"])]
    path = f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token"
    try:
        answer = await api.call("POST", path, body)
    except KubeApiError as exc:
        raise NotYet(f"{where}: no token for {namespace}/{account}: {exc}") from exc
    token = (answer.get("status") or {}).get("token")
    if not isinstance(token, str) or not token:
        raise NotYet(f"{where}: the TokenRequest for {namespace}/{account} returned no token")
    return token


async def fill_volume(
    api: KubeApi, pod: Mapping[str, Any], volume: VolumePlan, pod_ip: str, host_ip: str,
    owner: int | None,
) -> None:  # fmt: skip
    """Make `volume.path` hold what the volume holds; `owner` is the uid of its container user
    (tokens and the directory of an emptyDir are theirs)."""
    where = f"volume {volume.name}"
    namespace = str((pod.get("metadata") or {}).get("namespace", ""))
    source = volume.spec
    if volume.kind in ("hostPath", "emptyDir"):
        _make_dir(volume, where)
        return
    files: dict[str, tuple[bytes, int]] = {}
    if volume.kind == "configMap":
        for name, text in (await _config_map(api, namespace, source, where)).items():
            files[_relative(name, where)] = (text.encode(), 0o644)
    else:  # projected
        for item in source.get("sources") or []:
            if "serviceAccountToken" in item:
                sat = item["serviceAccountToken"] or {}
                token = await _token(api, pod, sat, where)
                files[_relative(str(sat.get("path", "token")), where)] = (token.encode(), 0o600)
            elif "configMap" in item:
                for name, text in (
                    await _config_map(api, namespace, item["configMap"] or {}, where)
                ).items():
                    files[_relative(name, where)] = (text.encode(), 0o644)
            elif "downwardAPI" in item:
                for entry in (item["downwardAPI"] or {}).get("items") or []:
                    ref = entry.get("fieldRef")
                    if not ref:
                        raise Unsupported(f"{where}: downwardAPI supports fieldRef items only")
                    value = field_value(pod, str(ref.get("fieldPath", "")), pod_ip, host_ip)
                    files[_relative(str(entry.get("path", "")), where)] = (value.encode(), 0o644)
            else:
                kinds = ", ".join(item) or "nothing"
                raise Unsupported(f"{where}: projected source {kinds} is not supported")
    _write_files(Path(volume.path), files, owner)


def _make_dir(volume: VolumePlan, where: str) -> None:
    path = Path(volume.path)
    if volume.kind == "emptyDir":
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, 0o777)  # noqa: S103 - the kubelet's emptyDir: any container user writes
        return
    kind = str(volume.spec.get("type") or "")
    if kind in ("", "DirectoryOrCreate"):
        path.mkdir(parents=True, exist_ok=True, mode=0o755)
    elif kind == "Directory":
        if not path.is_dir():
            raise NotYet(f"{where}: hostPath {volume.spec.get('path')} is not a directory yet")
    else:
        raise Unsupported(f"{where}: hostPath type {kind} is not supported (only directories)")


def _write_files(path: Path, files: Mapping[str, tuple[bytes, int]], owner: int | None) -> None:
    path.mkdir(parents=True, exist_ok=True)
    for name, (data, mode) in files.items():
        _write(path / name, data, mode, owner if mode == 0o600 else None)
