#!/usr/bin/env bash
# Builds and starts the server on the bundled demo folder: http://127.0.0.1:8080/
# Extra arguments go to `assetsync serve` (see `scripts/run.sh --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --release --locked -p assetsync -- serve "$@"
