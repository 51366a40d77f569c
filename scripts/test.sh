#!/usr/bin/env bash
# Runs every test: formatting and lints, the wasm32 build of the pure core, unit, golden and
# end-to-end tests, the IndexedDB store tests and the page-level tests in headless Chromium.
# Installs what a fresh machine lacks (wasm32 target, wasm-bindgen-cli, Chromium, playwright-core)
# and skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

step "browser and driver"
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  as_root apt-get update
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver
fi

if cargo fmt --version >/dev/null 2>&1; then
  step "cargo fmt --check"
  cargo fmt --all --check
fi

# Builds the WASM client into www/pkg, installing the target and wasm-bindgen-cli if needed.
step "web client"
scripts/build-web.sh

if cargo clippy --version >/dev/null 2>&1; then
  step "cargo clippy"
  cargo clippy --workspace --all-targets --locked -- -D warnings
  cargo clippy --target wasm32-unknown-unknown -p assetsync-wasm --all-targets --locked -- -D warnings
fi

step "protocol crate builds for wasm32"
cargo check --locked --target wasm32-unknown-unknown -p assetsync-protocol

step "unit, golden and end-to-end tests"
cargo test --workspace --exclude assetsync-wasm --locked

step "IndexedDB store tests in headless Chromium (wasm-bindgen-test)"
CHROMEDRIVER=/usr/bin/chromedriver \
CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
  cargo test --locked --target wasm32-unknown-unknown -p assetsync-wasm

step "page-level tests in headless Chromium (playwright-core)"
(cd tests/browser && { [ -d node_modules/playwright-core ] || npm ci --no-audit --no-fund; } && node --test e2e.test.mjs)
