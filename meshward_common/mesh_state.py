"""The control plane's MeshState message read back as registry entries (the CA's workers and the
node agents both decide from a Registry; the control plane's supervisor is what builds the
MeshState from its sources)."""

from __future__ import annotations

from meshward_common import ports, registry
from meshward_common.protos import meshward_discovery_pb2 as mdpb


def registry_from_mesh_state(state: mdpb.MeshState) -> registry.Registry:
    """The control plane's Workload messages as registry entries (selector from netns/uids)."""
    items: list[registry.Workload] = []
    for w in state.workloads:
        netns = w.netns
        uids = tuple(int(u) for u in w.uids)
        selector = None
        if netns:
            selector = registry.Selector(netns=netns, uids=uids or (ports.PROXY_UID,))
        items.append(
            registry.Workload(
                name=w.name,
                namespace=w.namespace,
                service_account=w.service_account,
                node=w.node,
                address=w.address,
                service=w.service,
                ports=tuple(int(p) for p in w.ports),
                labels=dict(w.labels),
                selector=selector,
                pod_uid=w.pod_uid,
                sidecar_container_id=w.sidecar_container_id,
            )
        )
    return registry.Registry(tuple(items), state.trust_domain)
