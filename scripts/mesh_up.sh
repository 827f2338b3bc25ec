#!/usr/bin/env bash
# `make up` / `make down`: the local mesh. Needs root or CAP_NET_ADMIN; checked first, so that
# without it nothing is installed or half-built.
#   usage: scripts/mesh_up.sh up|down [meshward up/down options...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
action="${1:?usage: scripts/mesh_up.sh up|down [options]}"
shift

cap_eff="$(awk '/^CapEff:/ {print $2}' /proc/self/status)"
if [[ "$(id -u)" -ne 0 ]] && (( (0x${cap_eff:-0} & 0x1000) == 0 )); then
  echo "meshward ${action}: needs root or CAP_NET_ADMIN (try sudo)" >&2
  exit 1
fi

case "$action" in
  up)
    # What is missing: the venv, iptables and friends, then Jaeger (traces are optional: the mesh
    # comes up without them if Jaeger cannot be built here).
    make --no-print-directory install system-deps
    # On Kubernetes: the API server and friends, built once from the Go module proxy (cached).
    for arg in "$@"; do
      if [[ "$arg" == "--kubernetes" ]]; then make --no-print-directory kube; fi
    done
    if ! make --no-print-directory jaeger; then
      echo "meshward up: could not build Jaeger (see above); starting the mesh without traces" >&2
    fi
    exec .venv/bin/python -m meshward up "$@"
    ;;
  down)
    if [[ ! -x .venv/bin/python ]]; then
      echo "meshward down: no .venv, so no mesh was started from this checkout" >&2
      exit 0
    fi
    exec .venv/bin/python -m meshward down "$@"
    ;;
  *)
    echo "usage: scripts/mesh_up.sh up|down [options]" >&2
    exit 2
    ;;
esac
