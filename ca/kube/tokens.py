"""Node agents on Kubernetes authenticate with their projected ServiceAccount token.

As istiod's CA and SPIRE's k8s_psat attestor do: the token goes to the API server's TokenReview
with our audience (`istio-ca` by default); it must be the node agents' service account's, bound to
a Pod (the token's pod claims), and that Pod must still exist with the same uid, not finished, and
be bound to a node: the caller is that node's agent. The Pod is checked against the control plane's
own watch of Pods (the published mesh state, whose registry holds every Pod bound to a node
and not finished, with its uid), not the review alone: the API server caches token reviews for about 10 s, so a
token of a Pod deleted a moment ago still reviews as authenticated.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ca.entitlement import Caller
from ca.kube.api import KubeApi, KubeApiError
from meshward_common.errors import NotReady, PermissionDenied, Unauthenticated
from meshward_common.registry import Registry

if TYPE_CHECKING:
    from ca.service import MeshView

log = logging.getLogger(__name__)

POD_NAME = "authentication.kubernetes.io/pod-name"
POD_UID = "authentication.kubernetes.io/pod-uid"
FRESH_POD_WAIT = 3.0  # seconds: a watch event reaches every worker well within this


class PodNotFound(Unauthenticated):
    """The token's Pod is not (or not yet) in the mesh state."""


def looks_like_jwt(token: str) -> bool:
    """A ServiceAccount token is a JWS (three dot-separated parts); a join token has no dots."""
    return token.count(".") == 2


def _first(extra: Mapping[str, Any], key: str) -> str:
    values = extra.get(key) or []
    return str(values[0]) if isinstance(values, list) and values else ""


def node_of_review(
    status: Mapping[str, Any],
    audience: str,
    agent_namespace: str,
    agent_service_account: str,
    registry: Registry,
) -> tuple[str, str]:
    """(node, "namespace/pod") of an agent's reviewed token; raises saying why not. Pure."""
    if not status.get("authenticated"):
        why = status.get("error") or "not authenticated"
        raise Unauthenticated(f"ServiceAccount token refused by TokenReview: {why}")
    if audience not in (status.get("audiences") or [audience]):
        raise Unauthenticated(f"ServiceAccount token is not for audience {audience!r}")
    user = status.get("user") or {}
    username = str(user.get("username", ""))
    want = f"system:serviceaccount:{agent_namespace}:{agent_service_account}"
    if username != want:
        raise PermissionDenied(
            f"token of {username or 'nobody'}, not of the node agents' service account "
            f"{agent_namespace}/{agent_service_account}"
        )
    extra = user.get("extra") or {}
    pod_name, pod_uid = _first(extra, POD_NAME), _first(extra, POD_UID)
    if not pod_name or not pod_uid:
        raise PermissionDenied("token is not bound to a pod: use the projected token of the pod")
    key = f"{agent_namespace}/{pod_name}"
    found = [
        w for w in registry.workloads
        if w.namespace == agent_namespace and w.name == pod_name and w.pod_uid == pod_uid
    ]  # fmt: skip
    if not found:
        # Gone, finished, or never bound to a node: the mesh holds only pods bound and running.
        raise PodNotFound(
            f"token's pod {key} (uid {pod_uid}) no longer exists or is not running on a node"
        )
    return found[0].node, key


class KubeTokenAuthenticator:
    def __init__(
        self,
        api: KubeApi,
        mesh: MeshView,
        agent_namespace: str,
        agent_service_account: str,
        audience: str,
    ) -> None:
        self.api = api
        self.mesh = mesh
        self.agent_namespace = agent_namespace
        self.agent_service_account = agent_service_account
        self.audience = audience

    def accepts(self, token: str) -> bool:
        return looks_like_jwt(token)

    async def authenticate(self, token: str) -> Caller:
        try:
            status = await self.api.token_review(token, [self.audience])
        except KubeApiError as exc:
            log.warning("TokenReview failed: %s", exc)
            raise NotReady(f"cannot review the token with the Kubernetes API now: {exc}") from exc
        node, pod = await self._node_of(status)
        log.info("ServiceAccount token of pod %s: node agent of %s", pod, node)
        return Caller(node, "kube-token")

    async def _node_of(self, status: Mapping[str, Any]) -> tuple[str, str]:
        """A Pod created a moment ago may not have reached this worker's mesh state yet (watch,
        then publication): wait a little for newer states before calling it gone."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FRESH_POD_WAIT
        while True:
            version = self.mesh.state.version_info
            try:
                return node_of_review(
                    status, self.audience, self.agent_namespace, self.agent_service_account,
                    self.mesh.registry,
                )  # fmt: skip
            except PodNotFound:
                left = deadline - loop.time()
                if left <= 0:
                    raise
                async with self.mesh.changed:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            self.mesh.changed.wait_for(
                                lambda v=version: self.mesh.state.version_info != v  # type: ignore[misc]
                            ),
                            left,
                        )
