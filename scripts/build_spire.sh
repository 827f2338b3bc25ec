#!/usr/bin/env bash
# Build SPIRE's server from the Go module proxy into tools/bin/spire-server, from its own Go module
# (tools/spire): the reference row of the CA benchmark (`python -m bench ca`). Only `make bench`
# needs it, not `make test`.
#   usage: scripts/build_spire.sh [VERSION]   (SPIRE module version, default v1.13.3)
# A spire-server given by $MESHWARD_SPIRE_SERVER is used instead and nothing is built. Prints
# nothing when tools/bin/spire-server is already built for this version (the stamp matches).
set -euo pipefail

VERSION="${1:-v1.13.3}"
PKG="github.com/spiffe/spire/cmd/spire-server"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MOD="$ROOT/tools/spire"
OUT="$ROOT/tools/bin/spire-server"
STAMP="$ROOT/tools/bin/.spire.stamp"

if [[ -n "${MESHWARD_SPIRE_SERVER:-}" ]]; then
  if [[ -x "$MESHWARD_SPIRE_SERVER" ]]; then
    exit 0
  fi
  echo "build_spire: \$MESHWARD_SPIRE_SERVER=$MESHWARD_SPIRE_SERVER is not an executable file" >&2
  exit 1
fi
source "$ROOT/scripts/go_tools.sh"
go_require build_spire
cd "$MOD"
go_pin_tool build_spire github.com/spiffe/spire "$PKG" "$VERSION"

mkdir -p "$ROOT/tools/bin"
exec 9>"$ROOT/tools/bin/.spire.lock"
flock 9
want="$VERSION $(sha256sum go.mod go.sum | sha256sum | cut -c1-16)"
if [[ -x "$OUT" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
  exit 0
fi
go_writable_cache "$ROOT/tools"
echo "build_spire: building $PKG@$VERSION into tools/bin/spire-server (first build: several minutes)" >&2
go build -trimpath -ldflags "-s -w" -o "$OUT.tmp.$$" "$PKG"
mv -f "$OUT.tmp.$$" "$OUT"
echo "$want" > "$STAMP"
echo "build_spire: built $OUT" >&2
