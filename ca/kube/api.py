"""The control plane's few calls to the Kubernetes API, through the `kubernetes` client's asyncio API.

Objects stay plain JSON dicts (what the API server sent): the mesh needs a handful of fields and
the custom resources have no generated models. Every failure becomes one `KubeApiError` (status 0:
the API server was not reached), so no library exception leaks into the control plane.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes.aio import client as aio_client
from kubernetes.aio import config as aio_config
from kubernetes.aio.config.incluster_config import InClusterConfigLoader

from meshward_common.errors import ConfigError, MeshwardError

WATCH_SECONDS = 240  # the server ends each watch after this; we resume from the last version
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")  # in a pod
_MAX_LINE = 8 * 1024 * 1024  # one watch event; a larger one is refused, not buffered forever


@dataclass(frozen=True)
class Resource:
    kind: str
    path: str  # the collection across all namespaces

    def __str__(self) -> str:
        return self.kind


PODS = Resource("Pod", "/api/v1/pods")
SERVICES = Resource("Service", "/api/v1/services")
ENDPOINT_SLICES = Resource("EndpointSlice", "/apis/discovery.k8s.io/v1/endpointslices")
AUTHORIZATION_POLICIES = Resource(
    "AuthorizationPolicy", "/apis/security.istio.io/v1/authorizationpolicies"
)
PEER_AUTHENTICATIONS = Resource(
    "PeerAuthentication", "/apis/security.istio.io/v1/peerauthentications"
)
SERVICE_ENTRIES = Resource("ServiceEntry", "/apis/networking.istio.io/v1/serviceentries")


class KubeApiError(MeshwardError):
    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(f"Kubernetes API: {status or 'unreachable'}: {message}")


class Gone(KubeApiError):
    """410: the resourceVersion we hold is too old to watch from; list again."""


async def connect(
    kubeconfig: Path | None,
    *,
    service_account_dir: Path = SERVICE_ACCOUNT_DIR,
    environ: Mapping[str, str] = os.environ,
) -> KubeApi:
    """A client from a kubeconfig file, or the pod's in-cluster config when none is given: the
    API server at $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT, verified with the
    service account's ca.crt, authenticated by its token (re-read every minute: the kubelet
    rotates projected tokens)."""
    cfg = aio_client.Configuration()
    try:
        if kubeconfig is not None:
            await aio_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=str(kubeconfig), client_configuration=cfg
            )
        else:
            InClusterConfigLoader(  # type: ignore[no-untyped-call]
                token_filename=str(service_account_dir / "token"),
                cert_filename=str(service_account_dir / "ca.crt"),
                environ=environ,
            ).load_and_set(client_configuration=cfg)
    except (aio_config.ConfigException, OSError, ValueError, TypeError) as exc:
        if kubeconfig is not None:
            raise ConfigError(f"--kubeconfig: {kubeconfig}: {exc}") from exc
        raise ConfigError(
            f"in-cluster config ({service_account_dir}, $KUBERNETES_SERVICE_HOST/PORT): {exc} "
            "(outside a pod, give --kubeconfig)"
        ) from exc
    return KubeApi(aio_client.ApiClient(configuration=cfg))


def _key_of(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


class KubeApi:
    def __init__(self, api: aio_client.ApiClient) -> None:
        self.api = api

    @property
    def server(self) -> str:
        return str(self.api.configuration.host)

    async def _request(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        limits: aiohttp.ClientTimeout | None = None,
        content_type: str = "application/json",
    ) -> aiohttp.ClientResponse:
        params = await self.api.param_serialize(
            method,
            path,
            query_params=query or [],
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            response = await self.api.call_api(
                *params, _request_timeout=limits or aiohttp.ClientTimeout(total=30)
            )
        except aio_client.ApiException as exc:
            raise KubeApiError(int(exc.status or 0), str(exc.reason)) from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise KubeApiError(0, f"{self.server}: {exc or type(exc).__name__}") from exc
        raw: aiohttp.ClientResponse = response.response
        if raw.status >= 300:
            text = await raw.text()
            raw.release()
            raise _error(raw.status, text)
        return raw

    async def _json(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> dict[str, Any]:
        raw = await self._request(method, path, body=body, content_type=content_type)
        try:
            data = await raw.json()
        except (aiohttp.ClientError, ValueError) as exc:
            raise KubeApiError(raw.status, f"{path}: answer is not JSON: {exc}") from exc
        finally:
            raw.release()
        if not isinstance(data, dict):
            raise KubeApiError(raw.status, f"{path}: answer is not a JSON object")
        return data

    async def list_all(self, resource: Resource) -> tuple[dict[str, dict[str, Any]], str]:
        """Every object by "namespace/name", and the list's resourceVersion to watch from."""
        data = await self._json("GET", resource.path)
        items = data.get("items") or []
        version = str((data.get("metadata") or {}).get("resourceVersion", ""))
        return {_key_of(o): o for o in items if isinstance(o, dict)}, version

    async def watch(
        self, resource: Resource, version: str
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """(type, object) events after `version` until the server ends the watch."""
        query = [
            ("watch", "true"),
            ("resourceVersion", version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(WATCH_SECONDS)),
        ]
        timeout = aiohttp.ClientTimeout(total=None, connect=10, sock_read=WATCH_SECONDS + 30)
        raw = await self._request("GET", resource.path, query, limits=timeout)
        buffer = b""
        try:
            async for chunk in raw.content.iter_any():
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield _event(resource, line)
                if len(buffer) > _MAX_LINE:
                    raise KubeApiError(raw.status, f"{resource}: watch event over {_MAX_LINE} B")
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise KubeApiError(0, f"{resource} watch broke: {exc or type(exc).__name__}") from exc
        finally:
            raw.release()

    async def get(self, path: str) -> dict[str, Any] | None:
        """One object, or None if it does not exist."""
        try:
            return await self._json("GET", path)
        except KubeApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def call(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> dict[str, Any]:
        """Any other request (the development node runner's writes: Node, Pod status, TokenRequest,
        deletes); PATCH bodies need their content type (application/merge-patch+json)."""
        return await self._json(method, path, body, content_type)

    async def token_review(self, token: str, audiences: list[str]) -> dict[str, Any]:
        """The TokenReview's status (authenticated, user, audiences, error)."""
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": audiences},
        }
        answer = await self._json("POST", "/apis/authentication.k8s.io/v1/tokenreviews", body)
        status = answer.get("status")
        return status if isinstance(status, dict) else {}

    async def close(self) -> None:
        await self.api.close()  # type: ignore[no-untyped-call]


def _error(status: int, text: str) -> KubeApiError:
    try:
        message = str(json.loads(text).get("message", text))
    except (ValueError, AttributeError):
        message = text[:300]
    return Gone(status, message) if status == 410 else KubeApiError(status, message)


def _event(resource: Resource, line: bytes) -> tuple[str, dict[str, Any]]:
    try:
        event = json.loads(line)
        kind, obj = str(event["type"]), event["object"]
    except (ValueError, KeyError, TypeError) as exc:
        raise KubeApiError(200, f"{resource}: malformed watch event: {exc}") from exc
    if not isinstance(obj, dict):
        raise KubeApiError(200, f"{resource}: watch event without an object")
    if kind == "ERROR":
        raise _error(int(obj.get("code", 0) or 0), json.dumps(obj))
    return kind, obj


def object_key(obj: dict[str, Any]) -> str:
    return _key_of(obj)
