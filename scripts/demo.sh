#!/usr/bin/env bash
# The main job on the embedded local store (./rivulet-data), until the engine lands: builds the
# rivulet CLI and shows what fs-core adds to object storage, checking each result as it goes.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/rivulet-target}"

echo "== building rivulet (release)"
cargo build --release --locked --bin rivulet
R="$CARGO_TARGET_DIR/release/rivulet"
STORE="$PWD/rivulet-data"
export RIVULET_INDEX="${RIVULET_INDEX:-$PWD/.rivulet-state/index}"
mkdir -p "$STORE"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

step() { printf '\n== %s\n' "$*"; }

step "a 26 MiB CSV into the store (multipart, parts uploaded in parallel, committed atomically)"
seq 1 1500000 | awk '{ printf "%08d,event-%02d\n", $1, $1 % 97 }' > "$work/events.csv"
"$R" cp --quiet "$work/events.csv" "file://$STORE/events.csv"
"$R" stat "$STORE/events.csv"

step "append without downloading: the 26 MiB prefix is copied server-side"
printf 'appended,line-1\nappended,line-2\n' | "$R" append "$STORE/events.csv" -
printf 'appended,line-1\nappended,line-2\n' >> "$work/events.csv"
"$R" cat "$STORE/events.csv" | tail -n 3

step "truncate to 10 MiB, then grow to 10 MiB + 16 bytes (zeros)"
"$R" truncate "$STORE/events.csv" 10MiB
"$R" truncate "$STORE/events.csv" $((10 * 1024 * 1024 + 16))
head -c $((10 * 1024 * 1024)) "$work/events.csv" > "$work/expected.csv"
head -c 16 /dev/zero >> "$work/expected.csv"

step "download and compare byte for byte"
"$R" cp --quiet "file://$STORE/events.csv" "$work/back.csv"
cmp "$work/expected.csv" "$work/back.csv"
echo "identical: $(wc -c < "$work/back.csv") bytes"

step "listing, open uploads after a crash, and garbage"
"$R" ls -l "$STORE"
"$R" recover "$STORE"
"$R" gc --dry-run --older-than 0s "$STORE"

printf '\nDone. The store is %s; every object there is a plain file.\n' "$STORE"
