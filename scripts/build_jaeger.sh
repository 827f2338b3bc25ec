#!/usr/bin/env bash
# Build the Jaeger v2 all-in-one binary into tools/bin/jaeger from the tools Go module.
#   usage: scripts/build_jaeger.sh [VERSION]   (default v1.76.0, the Go module version)
# A jaeger given by $MESHWARD_JAEGER or found on PATH is used instead and nothing is built.
# Prints nothing when tools/bin/jaeger is already built for this version (the stamp matches).
set -euo pipefail

VERSION="${1:-v1.76.0}"
PKG="github.com/jaegertracing/jaeger/cmd/jaeger"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/tools"
OUT="$TOOLS/bin/jaeger"
STAMP="$TOOLS/bin/.jaeger.stamp"

# 1. A binary the user gave us wins: the fixture and `meshward traces` resolve in the same order.
if [[ -n "${MESHWARD_JAEGER:-}" ]]; then
  if [[ -x "$MESHWARD_JAEGER" ]]; then
    echo "build_jaeger: using \$MESHWARD_JAEGER=$MESHWARD_JAEGER, not building" >&2
    exit 0
  fi
  echo "build_jaeger: \$MESHWARD_JAEGER=$MESHWARD_JAEGER is not an executable file" >&2
  exit 1
fi
if found="$(command -v jaeger 2>/dev/null)" && [[ "$found" != "$OUT" ]]; then
  echo "build_jaeger: using jaeger from PATH ($found), not building" >&2
  exit 0
fi

source "$ROOT/scripts/go_tools.sh"
go_require build_jaeger
cd "$TOOLS"

# 2. Keep go.mod on the requested version.
go_pin_tool build_jaeger github.com/jaegertracing/jaeger "$PKG" "$VERSION"

# 3. One build at a time (make, the test harness and `meshward up` may all ask at once).
mkdir -p "$TOOLS/bin"
exec 9>"$TOOLS/bin/.jaeger.lock"
flock 9

# Cached? The stamp ties the binary to the version and the exact dependency set.
want="$VERSION $(sha256sum go.mod go.sum | sha256sum | cut -c1-16)"
if [[ -x "$OUT" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
  exit 0
fi

# 4. Build.
go_writable_cache "$TOOLS"
echo "build_jaeger: building $PKG@$VERSION into tools/bin/jaeger (first build takes several minutes)" >&2
go build -trimpath \
  -ldflags "-s -w -X github.com/jaegertracing/jaeger/internal/version.latestVersion=$VERSION" \
  -o "$OUT.tmp.$$" "$PKG"
mv -f "$OUT.tmp.$$" "$OUT"
echo "$want" > "$STAMP"
echo "build_jaeger: built $OUT" >&2
