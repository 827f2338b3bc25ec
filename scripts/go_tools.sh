# Helpers shared by the scripts that build Go tools from a pinned Go module (source, don't run).

# go_require NAME: fail with one line when Go is missing.
go_require() {
  command -v go >/dev/null || { echo "$1: 'go' not found on PATH (Go >= 1.24 needed)" >&2; exit 1; }
}

# go_pin_tool NAME MODULE PKG VERSION: in the current module dir, keep go.mod on MODULE@VERSION
# (`go get -tool` records the tool directive and go.sum).
go_pin_tool() {
  local name="$1" module="$2" pkg="$3" version="$4"
  if ! grep -qE "^[[:space:]]*${module} ${version//./\\.}( |$)" go.mod; then
    echo "$name: pinning $pkg@$version in $(pwd)/go.mod" >&2
    go get -tool "$pkg@$version"
  fi
}

# go_writable_cache TOOLS: reuse the default module/build caches (a rebuild after `make clean` is
# fast); if the default GOPATH is not writable, fall back to a project-local (git-ignored) one.
go_writable_cache() {
  if ! mkdir -p "$(go env GOMODCACHE)" 2>/dev/null || [[ ! -w "$(go env GOMODCACHE)" ]]; then
    export GOPATH="$1/gopath" GOMODCACHE="$1/gopath/pkg/mod"
  fi
}
