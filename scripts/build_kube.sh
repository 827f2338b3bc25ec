#!/usr/bin/env bash
# Build the Kubernetes control-plane binaries (kube-apiserver, etcd, kube-controller-manager,
# kube-scheduler, kubectl) from the tools/kube Go module into a cache outside the repository:
#   ${MESHWARD_KUBE_CACHE:-/var/cache/meshward/kube}/<version>/bin
#   usage: scripts/build_kube.sh [VERSION]   (default v1.37.2, the k8s.io/kubernetes module version)
# Prints the bin directory on stdout. A directory given by $MESHWARD_KUBE_BIN holding all five
# binaries is used instead and nothing is built. Nothing is rebuilt when the stamp matches, so a
# machine that built once pays nothing. Cold: ~10 min of 2 cores, ~2.5 GB of memory per link.
set -euo pipefail

VERSION="${1:-v1.37.2}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MOD="$ROOT/tools/kube"
BINARIES=(kube-apiserver etcd kube-controller-manager kube-scheduler kubectl)
K8S_CMDS=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
ETCD_PKG=go.etcd.io/etcd/server/v3
PKGS=("${K8S_CMDS[@]/#/k8s.io/kubernetes/cmd/}" "$ETCD_PKG")

have_all() { local b; for b in "${BINARIES[@]}"; do [[ -x "$1/$b" ]] || return 1; done; }

# 1. Binaries the user gave us win: the fixture and `meshward kube up` resolve in the same order.
if [[ -n "${MESHWARD_KUBE_BIN:-}" ]]; then
  if have_all "$MESHWARD_KUBE_BIN"; then
    echo "$MESHWARD_KUBE_BIN"
    exit 0
  fi
  echo "build_kube: \$MESHWARD_KUBE_BIN=$MESHWARD_KUBE_BIN lacks one of: ${BINARIES[*]}" >&2
  exit 1
fi

CACHE="${MESHWARD_KUBE_CACHE:-/var/cache/meshward/kube}"
OUT="$CACHE/$VERSION/bin"
STAMP="$OUT/.stamp"
source "$ROOT/scripts/go_tools.sh"
go_require build_kube
cd "$MOD"

# 2. Keep go.mod on the requested version: kubernetes' own go.mod points its staging modules at
# ./staging, which a module consumer cannot see, so each one is replaced by its v0.X.Y release.
# etcd joins at the version kubernetes itself pins for its etcd client.
if ! grep -qsE "^[[:space:]]*k8s.io/kubernetes ${VERSION//./\\.}( |$)" go.mod; then
  echo "build_kube: pinning k8s.io/kubernetes@$VERSION in $MOD/go.mod" >&2
  staging="v0.${VERSION#v1.}"
  kmod="$(go mod download -json "k8s.io/kubernetes@$VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
  {
    echo "module meshward/tools/kube"
    echo
    echo "go $(sed -n 's/^go //p' "$kmod")"
    echo
    echo "replace ("
    sed -n "s#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/src/k8s.io/[a-z0-9-]*\$#\t\1 => \1 $staging#p" "$kmod"
    echo ")"
  } > go.mod
  : > go.sum
  etcd="$(sed -n 's#^[[:space:]]*go.etcd.io/etcd/client/v3 \(v[0-9.]*\)$#\1#p' "$kmod")"
  k8s=("${K8S_CMDS[@]/#/k8s.io/kubernetes/cmd/}")
  go get -tool "${k8s[@]/%/@$VERSION}" "$ETCD_PKG@$etcd"
fi

# 3. One build at a time (make, the test fixture and `meshward kube up` may all ask at once).
mkdir -p "$OUT"
exec 9>"$OUT/.lock"
flock 9

want="$VERSION $(sha256sum go.mod go.sum | sha256sum | cut -c1-16)"
if have_all "$OUT" && [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
  echo "$OUT"
  exit 0
fi

# 4. Build all five in one go invocation (shared compile work), into a temp dir, then move.
go_writable_cache "$MOD"
ver="${VERSION#v}"
pkg=k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitVersion=$VERSION -X $pkg.gitMajor=${ver%%.*}"
ldflags+=" -X $pkg.gitMinor=$(cut -d. -f2 <<<"$ver") -X $pkg.gitTreeState=clean"
ldflags+=" -X $pkg.buildDate=1970-01-01T00:00:00Z"
echo "build_kube: building ${BINARIES[*]} $VERSION into $OUT (cold: ~10 min, ~2.5 GB per link)" >&2
tmp="$(mktemp -d "$OUT/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS
CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$tmp/" "${PKGS[@]}"
mv -f "$tmp/server" "$tmp/etcd"  # go names a .../server/v3 main "server"
for b in "${BINARIES[@]}"; do mv -f "$tmp/$b" "$OUT/$b"; done
echo "$want" > "$STAMP"
echo "build_kube: built in $((SECONDS - start)) s: $OUT" >&2
echo "$OUT"
