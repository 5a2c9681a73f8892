#!/usr/bin/env bash
# Runs every test: installs what the tests need (moto in a venv, s3s-fs, fuse3), checks
# formatting and lints, then runs the whole workspace's test suite. Tests that need an S3 API
# server start their own on a free 127.0.0.1 port and fail (never skip) if it cannot start.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/rivulet-target}"
export RIVULET_VENV="${RIVULET_VENV:-$HOME/.cache/rivulet-venv}"
export PATH="$HOME/.cargo/bin:$PATH"

bash scripts/install-test-deps.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo build (the CLI tests run the binary)"
cargo build --workspace --locked
echo "== cargo test"
cargo test --workspace --locked --no-fail-fast "$@"
