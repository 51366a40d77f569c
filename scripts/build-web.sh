#!/usr/bin/env bash
# Builds the WASM client, its JS glue and service worker modules as an npm package
# (target/npm/assetsync-VERSION.tgz), unpacked into www/pkg/ for the demo and the tests.
# Installs the wasm32 target, clang and wasm-bindgen-cli (pinned to Cargo.lock's wasm-bindgen) if
# missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  rustup target add wasm32-unknown-unknown
fi

# The C zstd decoder (the protocol crate's `c-zstd`) is compiled for wasm32 by clang.
if ! command -v clang >/dev/null; then
  echo "==> installing clang (it compiles the C zstd decoder for wasm32)"
  as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
  as_root apt-get update
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y clang
fi

# wasm-bindgen-cli must match the wasm-bindgen library version exactly.
want=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' Cargo.lock)
have=$(wasm-bindgen --version 2>/dev/null | awk '{print $2}' || true)
if [ "$have" != "$want" ]; then
  echo "==> installing wasm-bindgen-cli $want (about 5 minutes, once)"
  # Not --locked: the registry here lacks one of its locked dependency versions.
  cargo install wasm-bindgen-cli --version "$want"
fi

# The npm package: the client's glue and .wasm, the service worker's (the client with the
# `worker` feature: pages using the client alone do not download it), the service worker and
# page modules, their types and README, packed by `npm pack`. The demo and the browser tests
# use www/pkg, unpacked from that tarball, so what users install is what is tested.
stage=target/npm/package
rm -rf target/npm && mkdir -p "$stage"
for variant in assetsync assetsync-sw; do
  features=$([ "$variant" = assetsync-sw ] && echo --features=worker || true)
  cargo build --locked --profile wasm-release --target wasm32-unknown-unknown -p assetsync-wasm $features
  wasm-bindgen --target web --out-dir "$stage" --out-name "$variant" --remove-name-section --remove-producers-section \
    target/wasm32-unknown-unknown/wasm-release/assetsync_wasm.wasm
done
cp wasm-client/npm/* "$stage/"
version=$(awk -F'"' '/^version = / { print $2; exit }' Cargo.toml)
(cd "$stage" && npm pkg set version="$version")
tarball=$(cd target/npm && npm pack ./package --silent)
rm -rf www/pkg && mkdir -p www/pkg
tar -xzf "target/npm/$tarball" -C www/pkg --strip-components=1
echo "==> built target/npm/$tarball and www/pkg ($(wc -c < www/pkg/assetsync_bg.wasm) bytes of wasm, \
$(wc -c < www/pkg/assetsync-sw_bg.wasm) for the service worker)"
