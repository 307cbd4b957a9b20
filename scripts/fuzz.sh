#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ (cargo fuzz, libFuzzer + AddressSanitizer) for a bounded time
# and prints a table of target / runs / result. Exits non-zero if any target found a crash, a
# leak, a timeout or ran out of memory, and says where the reproducer is.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 60 seconds, every target)
#
# cargo fuzz needs nightly-only rustc flags (-Z sanitizer, sancov passes); this machine has only
# the stable toolchain, so RUSTC_BOOTSTRAP=1 lets stable accept them. cargo-fuzz itself is
# installed from crates.io when missing. Environment:
#   FUZZ_SANITIZER=address|none   (default address; `none`: 2-10 times the runs per second, no ASan)
#   FUZZ_RSS_MB=2048              (libFuzzer's -rss_limit_mb and -malloc_limit_mb: bounded memory)
#
# Each target starts from its committed seeds (fuzz/corpus/<target>/, read only) plus what
# earlier runs found (fuzz/target/corpus/<target>/, kept between runs, never committed).
# Crash inputs land in fuzz/artifacts/<target>/; logs in fuzz/target/logs/<target>.log.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
seconds=${1:-60}
[ $# -gt 0 ] && shift
if ! [[ $seconds =~ ^[0-9]+$ ]] || [ "$seconds" -lt 1 ]; then
  echo "usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]" >&2
  exit 2
fi
sanitizer=${FUZZ_SANITIZER:-address}
rss_mb=${FUZZ_RSS_MB:-2048}

export RUSTC_BOOTSTRAP=1
# cargo fuzz builds in fuzz/target (its own flags; nothing to share with the main build).
unset CARGO_TARGET_DIR

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
  cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi

# One build for all targets; -a: debug assertions and overflow checks, so they fail loudly too.
flags=(-a --sanitizer "$sanitizer")
echo "fuzz.sh: building ${targets[*]} (sanitizer $sanitizer)" >&2
cargo fuzz build "${flags[@]}" 2>&1 | sed '/^ *Compiling /d' >&2

mkdir -p fuzz/target/logs
declare -A runs result detail
failed=0
for t in "${targets[@]}"; do
  work=fuzz/target/corpus/$t
  seeds=fuzz/corpus/$t
  log=fuzz/target/logs/$t.log
  mkdir -p "$work" "$seeds" "fuzz/artifacts/$t"
  echo "fuzz.sh: $t for ${seconds}s" >&2
  set +e
  # New inputs go to the first corpus directory only: the committed seeds stay as they are.
  # -timeout: one input taking 10 s is a hang worth reporting.
  cargo fuzz run "${flags[@]}" "$t" "$work" "$seeds" -- \
    -max_total_time="$seconds" -rss_limit_mb="$rss_mb" -malloc_limit_mb="$rss_mb" \
    -timeout=10 -print_final_stats=1 >"$log" 2>&1
  rc=$?
  set -e
  runs[$t]=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  [ -n "${runs[$t]}" ] || runs[$t]=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -1)
  artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
  if [ "$rc" = 0 ]; then
    result[$t]=ok
  else
    failed=1
    if grep -q 'ERROR: libFuzzer: out-of-memory\|malloc(.*) exceeds limit' "$log"; then
      result[$t]=OOM
    elif grep -q 'ERROR: libFuzzer: timeout' "$log"; then
      result[$t]=TIMEOUT
    elif grep -q 'ERROR: LeakSanitizer' "$log"; then
      result[$t]=LEAK
    elif [ -n "$artifact" ]; then
      result[$t]=CRASH
    else
      result[$t]="FAILED (exit $rc)"
    fi
    detail[$t]=${artifact:-"no reproducer written; see $log"}
  fi
done

printf '\n%-10s %12s  %s\n' target runs result
for t in "${targets[@]}"; do
  printf '%-10s %12s  %s\n' "$t" "${runs[$t]:-?}" "${result[$t]}"
done
if [ "$failed" != 0 ]; then
  echo
  for t in "${targets[@]}"; do
    [ "${result[$t]}" = ok ] && continue
    echo "$t: ${result[$t]}: ${detail[$t]}"
    echo "  log: fuzz/target/logs/$t.log"
    if [[ ${detail[$t]} == fuzz/* || ${detail[$t]} == /* ]]; then
      echo "  reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run ${flags[*]} $t ${detail[$t]}"
    fi
  done
  exit 1
fi
