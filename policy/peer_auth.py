"""PeerAuthentication: which mTLS mode a workload's inbound port requires.

Istio's precedence, most specific wins: port-level (of the workload policy) > workload selector >
namespace > mesh-wide (root namespace, no selector). UNSET at any level inherits the next one up;
when nothing is set the caller's default applies (Istio's is PERMISSIVE; meshward's sidecar asks
for STRICT). When several policies tie at one level, the first by name wins (Istio: the oldest).
A root-namespace policy with a selector is ignored, as Istio does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from policy.model import MtlsMode, PeerAuthentication, PeerMode, selects


def resolve_mtls(
    policies: Iterable[PeerAuthentication],
    namespace: str,
    labels: Mapping[str, str],
    port: int,
    root_namespace: str,
    default: MtlsMode = "PERMISSIVE",
) -> MtlsMode:
    mesh = namespace_wide = workload = None
    for p in sorted(policies, key=lambda p: (p.namespace, p.name)):
        if p.match_labels:
            if p.namespace == root_namespace:
                continue  # Istio ignores workload-selector policies in the root namespace
            if workload is None and p.namespace == namespace and selects(p.match_labels, labels):
                workload = p
        elif namespace_wide is None and p.namespace == namespace and namespace != root_namespace:
            namespace_wide = p
        elif mesh is None and p.namespace == root_namespace:
            mesh = p
    mode: MtlsMode = default
    chain: list[PeerMode] = []
    if mesh:
        chain.append(mesh.mode)
    if namespace_wide:
        chain.append(namespace_wide.mode)
    if workload:
        chain.append(workload.mode)
        chain.append(workload.port_modes.get(port, "UNSET"))
    for level in chain:
        if level != "UNSET":
            mode = level
    return mode
