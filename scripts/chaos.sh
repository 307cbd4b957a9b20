#!/usr/bin/env bash
# The long versions of the fault tests (RELIABILITY.md), and optionally a mixed-load soak, then a
# Markdown summary: per row, runs, faults fired, invariants held, copyist's peak RSS and fds.
#
#   scripts/chaos.sh                      kill loops at 60 cycles each, no soak
#   scripts/chaos.sh --soak 30            ... plus the 30-minute soak (H1)
#   scripts/chaos.sh --soak 2 --cycles 20 --runs 2
#   scripts/chaos.sh --soak 30 --only-soak
#
# `cargo test` runs the same tests in their short form; the knobs below only lengthen them:
# COPYIST_KILL_CYCLES (writer kill -9 loop), COPYIST_CRASH_CYCLES (mirror kill -9 loop),
# COPYIST_SOAK_MINUTES (soak). Each test appends its row to $COPYIST_CHAOS_REPORT
# (tests/it/support/history/vacuity.rs); a test that fails before it can is listed as failed.
# Needs what `scripts/check.sh` needs (php-cli, php-sqlite3) and root for nothing here.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

soak=""
cycles=60
runs=1
only_soak=false
while [ $# -gt 0 ]; do
  case "$1" in
    --soak) soak="${2:?--soak needs MINUTES}"; shift 2 ;;
    --cycles) cycles="${2:?--cycles needs N}"; shift 2 ;;
    --runs) runs="${2:?--runs needs N}"; shift 2 ;;
    --only-soak) only_soak=true; shift ;;
    -h | --help) usage 0 ;;
    *) echo "chaos.sh: unknown argument $1" >&2; usage 2 ;;
  esac
done
if $only_soak && [ -z "$soak" ]; then
  echo "chaos.sh: --only-soak needs --soak MINUTES" >&2
  exit 2
fi

out_dir="${CHAOS_OUT:-${CARGO_TARGET_DIR:-target}/chaos}"
mkdir -p "$out_dir"
out_dir=$(cd "$out_dir" && pwd) # the tests run with another working directory in mind
stamp=$(date -u +%Y%m%dT%H%M%SZ)
report="$out_dir/rows-$stamp.tsv"
: >"$report"
logs="$out_dir/logs-$stamp"
mkdir -p "$logs"

echo "chaos.sh: building the test binary" >&2
bin=$(cargo test --test it --no-run 2>&1 | sed -n 's/.*Executable tests\/it\/main.rs (\(.*\))$/\1/p' | tail -1)
if [ -z "$bin" ] || [ ! -x "$bin" ]; then
  echo "chaos.sh: could not build or find the integration test binary" >&2
  exit 1
fi

# row | test name | environment for it
tests=()
if ! $only_soak; then
  tests+=(
    "A1+A5|durability::kill_9_under_write_load_loses_no_acknowledged_write|COPYIST_KILL_CYCLES=$cycles"
    "A3+A5|crash::kill_9_of_a_mirror_while_the_writer_takes_writes_applies_every_entry_once_in_order|COPYIST_CRASH_CYCLES=$cycles"
    "A1|crash::kill_9_of_the_writer_while_it_ships_a_backlog_loses_and_repeats_nothing|"
    "A3|crash::kill_9_of_a_mirror_mid_apply_halts_it_in_doubt_until_the_operator_skips_that_entry|"
  )
fi
if [ -n "$soak" ]; then
  tests+=("H1|soak::mixed_load_through_a_writer_and_two_mirrors_keeps_memory_and_fds_bounded|COPYIST_SOAK_MINUTES=$soak")
fi

failed=0
started=$(date +%s)
for spec in "${tests[@]}"; do
  IFS='|' read -r row name env_kv <<<"$spec"
  for run in $(seq 1 "$runs"); do
    log="$logs/${name//::/.}.$run.log"
    echo "chaos.sh: $row run $run/$runs: $name ${env_kv:-}" >&2
    before=$(wc -l <"$report")
    t0=$(date +%s)
    # shellcheck disable=SC2086 # env_kv is one NAME=VALUE word or empty
    if env COPYIST_CHAOS_REPORT="$report" $env_kv \
      "$bin" --exact "$name" --nocapture --test-threads 1 >"$log" 2>&1; then
      status=passed
    else
      status=FAILED
      failed=$((failed + 1))
    fi
    after=$(wc -l <"$report")
    echo "chaos.sh:   $status in $(($(date +%s) - t0)) s (log: $log)" >&2
    if [ "$status" = FAILED ] && [ "$after" = "$before" ]; then
      # It failed before it could report: count the run, with its invariants not shown held.
      printf '%s\t%s\t?\tno\t0\t0\t0\ttest failed before reporting (see %s)\n' \
        "$row" "$name" "$log" >>"$report"
    fi
  done
done

cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
mem=$(awk '/^MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)
summary="$out_dir/summary-$stamp.md"
{
  echo "Chaos run of $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'):"
  echo "$(nproc) cores ($cpu), $mem RAM, $(uname -sr); cycles $cycles, runs $runs${soak:+, soak $soak min};" \
    "$(($(date +%s) - started)) s in all."
  echo
  echo "| Row | Test | Runs | Faults fired | Invariants held | Peak RSS (MiB) | Peak fds | Notes |"
  echo "|---|---|---|---|---|---|---|---|"
  # One line per (row, test): runs counted, faults summed, held runs over runs, peaks maxed;
  # the note of the last run.
  awk -F'\t' '
    {
      key = $1 FS $2
      if (!(key in runs)) { order[++n] = key }
      runs[key]++
      if ($3 == "?") { unknown[key] = 1 } else { faults[key] += $3 }
      if ($4 == "yes") { held[key]++ }
      if ($6 > rss[key]) { rss[key] = $6 }
      if ($7 > fds[key]) { fds[key] = $7 }
      note[key] = $8
    }
    END {
      for (i = 1; i <= n; i++) {
        k = order[i]; split(k, p, FS)
        f = (k in unknown) ? faults[k] "+?" : faults[k]
        h = held[k] + 0
        printf "| %s | %s | %d | %s | %s | %.0f | %d | %s |\n", p[1], p[2], runs[k], f,
          (h == runs[k] ? "yes, " h "/" runs[k] : "**no**, " h "/" runs[k]), rss[k] / 1024,
          fds[k], note[k]
      }
    }' "$report"
} >"$summary"
cat "$summary"
echo >&2
echo "chaos.sh: summary in $summary, rows in $report, logs in $logs" >&2
if [ "$failed" -gt 0 ]; then
  echo "chaos.sh: $failed run(s) failed" >&2
  exit 1
fi
