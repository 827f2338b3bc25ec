"""Sizes that both ends of a stream must agree on (no imports: the sidecar loads this too)."""

from __future__ import annotations

from typing import Final

# The mesh state's one size bound, on every hop (control plane -> node agent -> sidecar). A
# 10,000-workload mesh is about 2.5 MB of MeshState (about 250 bytes a workload) plus its
# policies; 16 MiB leaves room for ~50,000 workloads with a few MiB of policy. The control plane
# refuses, at its source, a registry or policy change that would make the state larger (naming
# the file, keeping the last good state); every receiver accepts messages up to
# MESH_STATE_MESSAGE_LIMIT: the state plus room for the message around it. (gRPC's default of
# 4 MB broke distribution for a 6 MB policy set.)
MESH_STATE_MAX_BYTES: Final = 16 * 1024 * 1024
MESH_STATE_MESSAGE_LIMIT: Final = MESH_STATE_MAX_BYTES + 64 * 1024
