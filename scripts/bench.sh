#!/usr/bin/env bash
# Runs `rivulet bench` (the recoverable writer against a plain multipart upload of the same
# bytes, same store, same run) on the local store and on s3s-fs started on a free loopback
# port, and prints both reports. Extra arguments go to `rivulet bench` (e.g. --runs 5).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/rivulet-target}"
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --locked --bin rivulet >&2
R="$CARGO_TARGET_DIR/release/rivulet"

work=$(mktemp -d "${TMPDIR:-/var/tmp}/rivulet-bench.XXXXXX")
server=""
s3s_root=""
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$work"; [ -n "$s3s_root" ] && rm -rf "$s3s_root"; }
trap cleanup EXIT
export RIVULET_INDEX="$work/index"

echo "## local store"
"$R" bench "$@" "$work/local"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# s3s-fs keeps its data in memory (tmpfs) by default, as a remote S3's disk is not ours: on the
# same disk, the index flush of every persist also forces out the server's unwritten pages,
# which no real deployment pays. RIVULET_BENCH_S3S_DIR=/some/disk/dir measures that case.
if [ -n "${RIVULET_BENCH_S3S_DIR:-}" ]; then
  s3s_root=$(mktemp -d "$RIVULET_BENCH_S3S_DIR/rivulet-bench-s3s.XXXXXX")
elif [ -d /dev/shm ] && [ -w /dev/shm ]; then
  s3s_root=$(mktemp -d /dev/shm/rivulet-bench-s3s.XXXXXX)
else
  s3s_root="$work/s3s"
fi
mkdir -p "$s3s_root/bench"
s3s-fs --host 127.0.0.1 --port "$port" --access-key bench --secret-key benchsecret "$s3s_root" \
  >"$work/s3s.log" 2>&1 &
server=$!
for _ in $(seq 100); do
  (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchsecret AWS_REGION=us-east-1
echo
echo "## s3s-fs $(s3s-fs --version 2>/dev/null | head -1), data in $s3s_root"
"$R" bench "$@" "s3://bench?endpoint=http://127.0.0.1:$port&contiguous_parts=true"
