#!/usr/bin/env bash
# Hot-path micro-benchmarks under callgrind: instructions per operation, one row per benchmark
# in benches/hot_paths.rs. Instruction counts do not depend on what else the machine is doing,
# so a change of more than a few instructions is a real change (issue 6).
#
#   scripts/bench-micro.sh            all benchmarks, 2000 iterations each
#   scripts/bench-micro.sh NAME...    only these
#   MICRO_ITERS=N                     iterations per benchmark
#
# Needs valgrind (apt-get install valgrind). Builds the bench binary with the release profile
# (cargo's `bench` profile), writes the table to target/bench/micro.md as well.
set -euo pipefail
cd "$(dirname "$0")/.."
ITERS=${MICRO_ITERS:-2000}
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
command -v valgrind >/dev/null || { echo "valgrind is required (apt-get install valgrind)" >&2; exit 1; }

BIN=$(cargo bench --bench hot_paths --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "hot_paths" and m.get("executable"):
        print(m["executable"])')
[ -x "$BIN" ] || { echo "cannot build benches/hot_paths.rs: cargo bench --bench hot_paths --no-run" >&2; exit 1; }

if [ $# -gt 0 ]; then NAMES=("$@"); else LIST=$(COPYIST_BENCH_CALLGRIND=list "$BIN") && mapfile -t NAMES <<<"$LIST"; fi
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

instructions() { # name iters: instructions counted inside callgrind_loop
  COPYIST_BENCH_CALLGRIND=$1 COPYIST_BENCH_ITERS=$2 valgrind --tool=callgrind \
    --callgrind-out-file="$OUT/cg.out" --toggle-collect='*callgrind_loop*' "$BIN" >/dev/null 2>"$OUT/vg.err" \
    || { cat "$OUT/vg.err" >&2; exit 1; }
  awk '/^(summary|totals):/ {print $2; exit}' "$OUT/cg.out"
}

mkdir -p "$TARGET/bench"
{
  echo "| benchmark | instructions/op |"
  echo "|---|---:|"
  for name in "${NAMES[@]}"; do
    # Two runs, N and 2N iterations: the difference is N operations, without the first call's
    # one-time costs (lazy statics, the allocator's first pages).
    a=$(instructions "$name" "$ITERS")
    b=$(instructions "$name" $((2 * ITERS)))
    echo "| $name | $(( (b - a) / ITERS )) |"
  done
} | tee "$TARGET/bench/micro.md"
