#!/usr/bin/env bash
# Runs one libFuzzer fuzzer for a while, starting from its committed seed corpus.
#   run_fuzzer.sh FUZZER SEED_CORPUS WORK_DIR SECONDS [libFuzzer flags...]
# New inputs go to WORK_DIR/corpus (never into the source tree); a crashing, leaking or slow
# input is saved as WORK_DIR/artifacts/{crash,leak,timeout,oom}-<sha1> and named at the end.
# Exit status: 0 when the run ended without a finding, non-zero otherwise.
set -uo pipefail
if [ $# -lt 4 ]; then
  echo "usage: $0 FUZZER SEED_CORPUS WORK_DIR SECONDS [libFuzzer flags...]" >&2
  exit 2
fi
fuzzer=$1 seeds=$2 work=$3 seconds=$4
shift 4
mkdir -p "$work/corpus" "$work/artifacts"
# Findings of an earlier run in the same WORK_DIR stay; only this run's decide the status.
before=$(ls "$work/artifacts" | wc -l)
# -timeout: an input that takes longer is a finding (a hang, or work out of proportion to
# the input). -rss_limit_mb / -malloc_limit_mb: memory out of proportion is one too.
"$fuzzer" -max_total_time="$seconds" -timeout=30 -rss_limit_mb=2048 -malloc_limit_mb=1024 \
  -print_final_stats=1 -artifact_prefix="$work/artifacts/" "$@" "$work/corpus" "$seeds"
status=$?
after=$(ls "$work/artifacts" | wc -l)
if [ "$status" -ne 0 ] || [ "$after" -ne "$before" ]; then
  echo "FINDING in $(basename "$fuzzer") (exit status $status). Inputs kept:" >&2
  ls -t "$work/artifacts" | head -n $((after - before > 0 ? after - before : 1)) |
    sed "s|^|  $work/artifacts/|" >&2
  echo "Reproduce: $fuzzer INPUT  (or the _replay program of a normal build)" >&2
  exit 1
fi
exit 0
