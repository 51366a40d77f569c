#!/usr/bin/env bash
# Runs every test: formatting and lints, the wasm32 build of the pure core, unit, golden and
# end-to-end tests, the IndexedDB store tests and the page-level tests in headless Chromium and
# Firefox, and the multi-instance tests against a real Redis, nginx and S3 API (moto). Installs
# what a fresh machine lacks (rustfmt and clippy, the wasm32 target, clang, wasm-bindgen-cli,
# Chromium, Firefox ESR, Redis, nginx, moto, playwright-core, puppeteer-core, typescript) and
# skips what is already there. Checks that cannot run on this machine are listed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

step "browsers, driver, Redis and nginx"
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ] || [ ! -x /usr/bin/firefox-esr ] \
  || [ ! -x /usr/bin/redis-server ] || [ ! -x /usr/sbin/nginx ]; then
  as_root apt-get update
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y \
    chromium chromium-driver firefox-esr redis-server nginx-light
fi

step "moto (an S3-compatible server, for the shared store tests)"
if ! python3 -c "import moto.server" 2>/dev/null; then
  python3 -m pip --version >/dev/null 2>&1 \
    || as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y python3-pip
  python3 -m pip install --quiet 'moto[server]' \
    || python3 -m pip install --quiet --break-system-packages 'moto[server]'
fi

step "rustfmt and clippy"
installed=$(rustup component list --installed)
for component in rustfmt clippy; do
  grep -q "^$component-" <<<"$installed" || rustup component add "$component"
done

# Tests that cannot run on this machine say so here; the list is printed at the end.
ASSETSYNC_SKIPS=$(mktemp)
export ASSETSYNC_SKIPS
trap 'rm -f "$ASSETSYNC_SKIPS"' EXIT

step "cargo fmt --check"
cargo fmt --all --check

# Builds the WASM client into www/pkg, installing the target and wasm-bindgen-cli if needed.
step "web client"
scripts/build-web.sh

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
for features in "" --features=worker; do
  cargo clippy --target wasm32-unknown-unknown -p assetsync-wasm --all-targets --locked $features -- -D warnings
done

step "crate boundaries"
# The native client knows nothing of the server: no HTTP server, no file watching. (reqwest, its
# HTTP client for offloaded answers, brings hyper-util and tower-http as a client; C zstd
# decodes answers and compresses uploads.)
if cargo tree --locked -p assetsync-client -e normal | grep -E "axum|notify"; then
  echo "assetsync-client depends on server crates (above)" >&2
  exit 1
fi

step "protocol crate builds for wasm32"
cargo check --locked --target wasm32-unknown-unknown -p assetsync-protocol

step "unit, golden and end-to-end tests"
cargo test --workspace --exclude assetsync-wasm --locked

step "IndexedDB store tests in headless Chromium (wasm-bindgen-test)"
CHROMEDRIVER=/usr/bin/chromedriver \
CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
  cargo test --locked --target wasm32-unknown-unknown -p assetsync-wasm --features=worker

step "page-level and service worker tests in headless Chromium (playwright-core)"
(cd tests/browser && { [ -d node_modules/playwright-core ] && [ -d node_modules/puppeteer-core ] \
  && [ -d node_modules/typescript ] || npm ci --no-audit --no-fund; } \
  && node --test e2e.test.mjs pwa.test.mjs)

step "the same tests in headless Firefox (puppeteer-core over WebDriver BiDi)"
(cd tests/browser && BROWSER=firefox node --test e2e.test.mjs pwa.test.mjs)

step "skipped checks"
if [ -s "$ASSETSYNC_SKIPS" ]; then cat "$ASSETSYNC_SKIPS"; else echo "none"; fi
