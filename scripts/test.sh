#!/usr/bin/env bash
# Runs every test: formatting and lints, the wasm32 build of the pure core, unit, golden and
# end-to-end tests. Installs what a fresh machine lacks, and skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "toolchain"
if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  rustup target add wasm32-unknown-unknown
fi

if cargo fmt --version >/dev/null 2>&1; then
  step "cargo fmt --check"
  cargo fmt --all --check
fi
if cargo clippy --version >/dev/null 2>&1; then
  step "cargo clippy"
  cargo clippy --workspace --all-targets --locked -- -D warnings
fi

step "protocol crate builds for wasm32"
cargo check --locked --target wasm32-unknown-unknown -p assetsync-protocol

step "unit, golden and end-to-end tests"
cargo test --workspace --locked
