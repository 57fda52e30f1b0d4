#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 600) each, one after another,
# with allocation and memory limits; prints libFuzzer's final stats.
# Usage: fuzz/run-all.sh [SECONDS] [TARGET...]   (needs cargo-fuzz and a nightly toolchain)
set -uo pipefail
cd "$(dirname "$0")"
secs="${1:-600}"; shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=($(cargo +nightly fuzz list))
mkdir -p logs
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  cargo +nightly fuzz run -O "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$secs" -malloc_limit_mb=512 -rss_limit_mb=2048 \
    -print_final_stats=1 > "logs/$t.log" 2>&1
  rc=$?
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "logs/$t.log" | grep -o '[0-9]*$')
  echo "$t: exit $rc, ${execs:-?} executions in ${secs} s"
done
