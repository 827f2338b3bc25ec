"""`ca serve --kubernetes`: the supervisor's watches and each worker's token authenticator.

As with files, the supervisor's publisher owns the source: one set of watches per control plane,
however many workers, each new MeshState published to every worker (`ca.published`). Each worker
has its own API client for TokenReview and checks the token's Pod against that published state.
"""

from __future__ import annotations

from ca.config import CaConfig
from ca.kube.api import connect
from ca.kube.mesh import KubeMeshStateSource
from ca.kube.tokens import KubeTokenAuthenticator
from ca.service import MeshView

SYNC_TIMEOUT = 60.0


async def kube_mesh(cfg: CaConfig) -> KubeMeshStateSource:
    """Connected and synced: returns once every watched resource has been listed."""
    api = await connect(cfg.kubeconfig)
    mesh = KubeMeshStateSource(api, cfg.trust_domain, cfg.root_namespace, cfg.state_dir)
    await mesh.start(SYNC_TIMEOUT)
    return mesh


async def kube_tokens(cfg: CaConfig, mesh: MeshView) -> KubeTokenAuthenticator:
    api = await connect(cfg.kubeconfig)
    return KubeTokenAuthenticator(
        api, mesh, cfg.agent_namespace, cfg.agent_service_account, cfg.token_audience
    )
