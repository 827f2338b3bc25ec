#!/usr/bin/env bash
# The CA's native mTLS transport (native/ca_grpc, Rust) as ca/_native_grpc.abi3.so. Cargo's build
# directory lives outside the repository (${MESHWARD_CARGO_TARGET:-/var/cache/meshward/cargo-target}),
# so a machine that built once only relinks; crates come from crates.io at the versions in
# Cargo.lock.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET="${MESHWARD_CARGO_TARGET:-/var/cache/meshward/cargo-target}"
OUT=ca/_native_grpc.abi3.so
if ! command -v cargo >/dev/null; then
  [[ -x "$HOME/.cargo/bin/cargo" ]] && export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null || { echo "build_native: cargo not found (install Rust: rustup.rs)" >&2; exit 1; }
if ! mkdir -p "$TARGET" 2>/dev/null || [[ ! -w "$TARGET" ]]; then
  TARGET="$PWD/build/cargo-target"
fi
CARGO_TARGET_DIR="$TARGET" cargo build --quiet --release --locked --manifest-path native/ca_grpc/Cargo.toml
built="$TARGET/release/lib_native_grpc.so"
if [[ ! -f "$OUT" ]] || ! cmp -s "$built" "$OUT"; then
  cp "$built" "$OUT.tmp" && mv "$OUT.tmp" "$OUT"
fi
