#!/usr/bin/env bash
# Build tools/bin/spiffeclient (tools/spiffe/spiffeclient: a tiny go-spiffe v2 client) from its own
# Go module via the Go module proxy: the federation tests check with it that unmodified go-spiffe
# sees meshward's federated bundles (Workload API) and can fetch its bundle endpoint.
#   usage: scripts/build_spiffe_client.sh   (the tests run it; cached: prints nothing when current)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MOD="$ROOT/tools/spiffe"
OUT="$ROOT/tools/bin/spiffeclient"
STAMP="$ROOT/tools/bin/.spiffeclient.stamp"

source "$ROOT/scripts/go_tools.sh"
go_require build_spiffe_client
mkdir -p "$ROOT/tools/bin"
exec 9>"$ROOT/tools/bin/.spiffeclient.lock"
flock 9
cd "$MOD"
want="$(sha256sum go.mod go.sum spiffeclient/*.go | sha256sum | cut -c1-16)"
if [[ -x "$OUT" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
  exit 0
fi
go_writable_cache "$ROOT/tools"
echo "build_spiffe_client: building tools/bin/spiffeclient (go-spiffe; first build: a minute)" >&2
go build -trimpath -ldflags "-s -w" -o "$OUT.tmp.$$" ./spiffeclient
mv -f "$OUT.tmp.$$" "$OUT"
echo "$want" > "$STAMP"
echo "build_spiffe_client: built $OUT" >&2
