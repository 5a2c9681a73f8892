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
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole workspace (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "summary: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
