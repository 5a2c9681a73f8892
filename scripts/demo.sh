#!/usr/bin/env bash
# The main job on the embedded local store (./rivulet-data): builds rivulet and runs
# jobs/quickstart.toml, a Nexmark stream through a filter, a projection and a sliding window
# into exactly-once bucketed files, then shows what it wrote.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/rivulet-target}"

echo "== building rivulet (release)"
cargo build --release --locked --bin rivulet
R="$CARGO_TARGET_DIR/release/rivulet"
STORE="$PWD/rivulet-data"
# The engine's own index, beside the store (it is only a local cache of open uploads).
export RIVULET_INDEX="${RIVULET_INDEX:-$PWD/.rivulet-state/engine-index}"

echo
echo "== rivulet run jobs/quickstart.toml   (store: $STORE)"
"$R" run --store "$STORE" jobs/quickstart.toml

echo
echo "== finished files (committed at checkpoints; in-progress files are invisible)"
"$R" ls -l -r "$STORE/out/quickstart/" | tail -n 6
first_csv=$("$R" ls -r "$STORE/out/quickstart/big-bids/" | head -n 1)
echo
echo "== the first lines of $first_csv"
"$R" cat "$STORE/$first_csv" | head -n 3
printf '\nDone. Run it again and it starts a new run (new part-file names); kill it (kill -9) and\nrun it again and it resumes from its last checkpoint. docs/engine.md has the rest.\n'
