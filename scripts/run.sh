#!/usr/bin/env bash
# Builds the WASM client and the server, then serves the demo: http://127.0.0.1:8080/
# Extra arguments go to `assetsync serve` (see `scripts/run.sh --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build-web.sh
exec cargo run --release --locked -p assetsync -- serve "$@"
