#!/usr/bin/env bash
# Build the CA benchmark's Go load generators from their own Go module (tools/ghz, not the Jaeger
# tools/go.mod): tools/bin/ghz (github.com/bojand/ghz) and tools/bin/caload (tools/ghz/caload, a
# lean CreateCertificate client), so the benchmark's client does not cost what a Python one does.
#   usage: scripts/build_ghz.sh [VERSION]   (ghz version, default v0.121.0)
# A ghz given by $MESHWARD_GHZ is used instead and only caload is built. Prints nothing when
# both are already built for this version and source/dependency set (the stamp matches).
set -euo pipefail

VERSION="${1:-v0.121.0}"
PKG="github.com/bojand/ghz/cmd/ghz"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MOD="$ROOT/tools/ghz"
OUT="$ROOT/tools/bin/ghz"
STAMP="$ROOT/tools/bin/.ghz.stamp"

if [[ -n "${MESHWARD_GHZ:-}" && ! -x "$MESHWARD_GHZ" ]]; then
  echo "build_ghz: \$MESHWARD_GHZ=$MESHWARD_GHZ is not an executable file" >&2
  exit 1
fi
source "$ROOT/scripts/go_tools.sh"
go_require build_ghz
cd "$MOD"
go_pin_tool build_ghz github.com/bojand/ghz "$PKG" "$VERSION"

mkdir -p "$ROOT/tools/bin"
exec 9>"$ROOT/tools/bin/.ghz.lock"
flock 9
want="$VERSION $(sha256sum go.mod go.sum caload/*.go | sha256sum | cut -c1-16)"
if [[ -x "$OUT" && -x "$ROOT/tools/bin/caload" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
  exit 0
fi
go_writable_cache "$ROOT/tools"
echo "build_ghz: building tools/bin/caload and $PKG@$VERSION into tools/bin/ghz (first build: a minute or two)" >&2
go build -trimpath -ldflags "-s -w" -o "$ROOT/tools/bin/caload.tmp.$$" ./caload
mv -f "$ROOT/tools/bin/caload.tmp.$$" "$ROOT/tools/bin/caload"
if [[ -z "${MESHWARD_GHZ:-}" ]]; then
  go build -trimpath -ldflags "-s -w" -o "$OUT.tmp.$$" "$PKG"
  mv -f "$OUT.tmp.$$" "$OUT"
fi
echo "$want" > "$STAMP"
echo "build_ghz: built tools/bin/caload and tools/bin/ghz" >&2
