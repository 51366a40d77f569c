#!/usr/bin/env bash
# Builds the WASM client and its JS glue into www/pkg/ (assetsync.js, assetsync_bg.wasm, .d.ts).
# Installs the wasm32 target and wasm-bindgen-cli (pinned to Cargo.lock's wasm-bindgen) if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  rustup target add wasm32-unknown-unknown
fi

# wasm-bindgen-cli must match the wasm-bindgen library version exactly.
want=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' Cargo.lock)
have=$(wasm-bindgen --version 2>/dev/null | awk '{print $2}' || true)
if [ "$have" != "$want" ]; then
  echo "==> installing wasm-bindgen-cli $want (about 5 minutes, once)"
  # Not --locked: the registry here lacks one of its locked dependency versions.
  cargo install wasm-bindgen-cli --version "$want"
fi

cargo build --locked --profile wasm-release --target wasm32-unknown-unknown -p assetsync-wasm
rm -rf www/pkg
wasm-bindgen --target web --out-dir www/pkg --out-name assetsync --remove-name-section --remove-producers-section \
  target/wasm32-unknown-unknown/wasm-release/assetsync_wasm.wasm
echo "==> built www/pkg ($(wc -c < www/pkg/assetsync_bg.wasm) bytes of wasm)"
