"""Objects applied to the API server as `kubectl apply --server-side` does, and waits on them.

Sync (the launcher is): the `kubernetes` client's dynamic client, one field manager, conflicts
forced (the objects are ours). A refusal is one ConfigError naming the object and the reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from kubernetes import config as k8s_config
from kubernetes import dynamic
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from meshward_common.errors import ConfigError, NotReady

FIELD_MANAGER = "meshward"


def client(kubeconfig: Path) -> ApiClient:
    try:
        return k8s_config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call,no-any-return]
    except (k8s_config.ConfigException, OSError, ValueError) as exc:
        raise ConfigError(f"{kubeconfig}: {exc}") from exc


def _what(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    ns = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{obj.get('kind')} {ns}{meta.get('name')}"


def _reason(exc: ApiException) -> str:
    import json

    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except ValueError:
        return str(exc.reason)


def apply_objects(api: ApiClient, objects: Iterable[dict[str, Any]]) -> None:
    """Server-side apply each object in order; CRDs are waited for until established, so the
    objects of their kinds that follow are known to the API server."""
    dyn = dynamic.DynamicClient(api)  # type: ignore[no-untyped-call]
    for obj in objects:
        try:
            resource = dyn.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
            resource.server_side_apply(
                body=obj,
                namespace=(obj.get("metadata") or {}).get("namespace"),
                field_manager=FIELD_MANAGER,
                force_conflicts=True,
            )
        except ApiException as exc:
            raise ConfigError(f"apply {_what(obj)}: {_reason(exc)}") from exc
        except (HTTPError, OSError) as exc:
            raise ConfigError(f"apply {_what(obj)}: API server unreachable: {exc}") from exc
        if obj["kind"] == "CustomResourceDefinition":
            name = obj["metadata"]["name"]
            wait(f"CRD {name} established", _established_check(resource, name), 60)
            dyn = dynamic.DynamicClient(api)  # type: ignore[no-untyped-call]  # new kinds: rediscover


def _established_check(resource: Any, name: str) -> Callable[[], bool]:
    def check() -> bool:
        conditions = resource.get(name=name).status.conditions or []
        return any(c.type == "Established" and c.status == "True" for c in conditions)

    return check


def wait(what: str, check: Callable[[], Any], timeout: float) -> Any:
    """Poll `check` (API errors count as not yet) until it is truthy; NotReady after timeout."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        try:
            found = check()
            if found:
                return found
        except (ApiException, HTTPError, OSError) as exc:
            last = f": {exc}"
        if time.monotonic() > deadline:
            raise NotReady(f"{what}: not after {timeout:.0f}s{last}")
        time.sleep(0.25)
