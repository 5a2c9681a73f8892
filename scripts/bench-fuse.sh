#!/bin/bash
# The FUSE mount benchmark (docs/benchmarks.md, "## fuse-mount"): in the same round-robin rounds,
# against one loopback s3s-fs server, the Rivulet mount (release build), s3fs-fuse, `rclone mount`
# (VFS cache modes "writes" and "off") and a direct boto3 multipart upload/download measure
#   - a sequential write of a 1 GiB file (dd bs=1M conv=fsync: the time includes fsync and close),
#   - its sequential read after dropping the page cache, and a cold read after a remount,
#   - the creation of 1,000 files of 4 KiB (and the time until all are listed in the bucket).
# Medians of the rounds go to a table and a plot (docs/img/fuse-bench.png).
#
#   scripts/bench-fuse.sh [ROUNDS]          # default 3; needs root (drop_caches, allow_other)
#   scripts/bench-fuse.sh mount KIND BUCKET MNT | umount MNT    # used by bench-fuse.py to remount
#
# Needs: fuse3, s3fs, rclone (apt-get install -y fuse3 s3fs rclone), s3s-fs and the venv of
# scripts/install-test-deps.sh with boto3 and matplotlib, and `cargo build --release -p rivulet`.
#
# Adapted from the peer measurement scripts in /work/shared/anchors/fuse/ (env.sh, server.sh,
# mount.sh, bench_all.sh, written for this project to measure s3fs-fuse and rclone): the same
# mount options for the peers, plus a Rivulet kind, its own port and scratch directory.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
export PORT=${RIVULET_FUSE_BENCH_PORT:-5069}
export EP=http://127.0.0.1:$PORT
export AWS_ACCESS_KEY_ID=a AWS_SECRET_ACCESS_KEY=b AWS_DEFAULT_REGION=us-east-1 AWS_REGION=us-east-1
export W=${RIVULET_FUSE_BENCH_DIR:-/tmp/rivulet-fusebench}
export RCLONE_CONFIG=$W/rclone.conf
export SRC=/dev/shm/rivulet-fusebench-src1g
VENV=${RIVULET_VENV:-$HOME/.cache/rivulet-venv}
PY=$VENV/bin/python
RIVULET=${RIVULET_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/rivulet}
mkdir -p "$W/pids" "$W/logs" "$W/mnt"

mount_kind() {
  local kind=$1 bucket=$2 mnt=$3 name
  name=$(basename "$mnt")
  mkdir -p "$mnt"
  case $kind in
  rivulet)
    # Its own index and part cache per mount; the store is the bucket on the same server.
    "$RIVULET" --index "$W/rivulet-index-$name" --cache-dir "$W/rivulet-cache-$name" \
      mount --foreground --allow-other "s3://$bucket?endpoint=$EP&path_style=true&region=us-east-1&contiguous_parts=true" \
      "$mnt" >> "$W/logs/$name.log" 2>&1 &
    ;;
  s3fs)
    printf 'a:b\n' > "$W/passwd-s3fs"; chmod 600 "$W/passwd-s3fs"
    s3fs "$bucket" "$mnt" -f -o "passwd_file=$W/passwd-s3fs,url=$EP,use_path_request_style,endpoint=us-east-1,allow_other,dbglevel=warn" \
      >> "$W/logs/$name.log" 2>&1 &
    ;;
  rclone-writes|rclone-off)
    cat > "$RCLONE_CONFIG" <<EOC
[s3local]
type = s3
provider = Other
env_auth = false
access_key_id = a
secret_access_key = b
region = us-east-1
endpoint = $EP
force_path_style = true
EOC
    local mode=${kind#rclone-} cache=$W/rcache-$name
    if [ "${FRESH_CACHE:-0}" = 1 ]; then rm -rf "$cache"; fi
    # rclone 1.60 fails with LoadCustomCABundleError while AWS_CA_BUNDLE is set.
    env -u AWS_CA_BUNDLE rclone mount "s3local:$bucket" "$mnt" --config "$RCLONE_CONFIG" \
      --vfs-cache-mode "$mode" --cache-dir "$cache" --allow-other \
      --log-file "$W/logs/$name.log" --log-level NOTICE &
    ;;
  *) echo "unknown kind $kind" >&2; return 2;;
  esac
  echo $! > "$W/pids/$name.pid"
  for _ in $(seq 150); do
    if mountpoint -q "$mnt"; then return 0; fi
    sleep 0.2
  done
  echo "mounting $kind at $mnt failed:" >&2; tail -5 "$W/logs/$name.log" >&2; return 1
}

umount_kind() {
  local mnt=$1 pidfile pid
  pidfile=$W/pids/$(basename "$mnt").pid
  fusermount3 -u "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true
  if [ -f "$pidfile" ]; then
    pid=$(cat "$pidfile")
    for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then echo "warning: daemon $pid still alive" >&2; fi
    rm -f "$pidfile"
  fi
}

case ${1:-} in
mount) shift; mount_kind "$@"; exit;;
umount) shift; umount_kind "$@"; exit;;
esac

ROUNDS=${1:-3}
[ -x "$RIVULET" ] || { echo "no release build at $RIVULET: cargo build --release -p rivulet" >&2; exit 1; }
for tool in s3fs rclone fusermount3; do
  command -v $tool > /dev/null || { echo "$tool is missing: apt-get install -y fuse3 s3fs rclone" >&2; exit 1; }
done
S3S_FS=$(command -v s3s-fs || echo "$HOME/.cargo/bin/s3s-fs")

mkdir -p "$W/s3root"
"$S3S_FS" --host 127.0.0.1 --port "$PORT" --access-key a --secret-key b "$W/s3root" > "$W/logs/s3s-fs.log" 2>&1 &
SERVER=$!
KINDS=(rivulet s3fs rclone-writes rclone-off)
cleanup() {
  for kind in "${KINDS[@]}"; do umount_kind "$W/mnt/$kind"; done
  kill "$SERVER" 2>/dev/null || true
  wait "$SERVER" 2>/dev/null || true
  rm -f "$SRC" /dev/shm/rivulet-fusebench-dl1g
}
trap cleanup EXIT
sleep 1

[ -f "$SRC" ] || head -c "${RIVULET_FUSE_BENCH_MIB:-1024}M" /dev/urandom > "$SRC"
"$PY" "$HERE/bench-fuse.py" mkbucket raw
for kind in "${KINDS[@]}"; do
  "$PY" "$HERE/bench-fuse.py" mkbucket "$kind"
  mount_kind "$kind" "$kind" "$W/mnt/$kind"
done
OUT=$W/logs/rounds.jsonl
: > "$OUT"
for round in $(seq "$ROUNDS"); do
  echo "round $round of $ROUNDS" >&2
  "$PY" "$HERE/bench-fuse.py" raw raw "$round" >> "$OUT"
  for kind in "${KINDS[@]}"; do
    # A peer that fails one measurement must not lose the whole run's report: the medians
    # are then over the rounds it completed (its cell lists them).
    "$PY" "$HERE/bench-fuse.py" fuse "$kind" "$round" >> "$OUT" ||
      echo "warning: $kind failed in round $round (logs in $W/logs); reporting the rest" >&2
  done
done
"$PY" "$HERE/bench-fuse.py" report "$OUT" "$ROOT/docs/img/fuse-bench.png"
