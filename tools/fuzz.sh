#!/usr/bin/env bash
# A longer fuzzing campaign than CI's 60 s per fuzzer:
#
#   tools/fuzz.sh [SECONDS] [FUZZER...]     (default: 600 s each, every fuzzer)
#   JOBS=4 tools/fuzz.sh 3600 deflate_read_fuzzer
#
# Builds the fuzzers in build-asan/ (clang, ASan+UBSan, -Dfuzz=true: the same build CI uses
# for them), then runs each for SECONDS, JOBS at a time (default: the number of cores),
# starting from tests/fuzz/corpus/<name>/ plus what earlier campaigns found, which is kept
# in build-asan/fuzz-campaign/<fuzzer>/corpus. Crashing, leaking, slow or memory-hungry
# inputs are kept in build-asan/fuzz-campaign/<fuzzer>/artifacts/ and listed at the end;
# the exit status is non-zero if there is any. To make a finding a regression test, copy
# the input into tests/fuzz/corpus/<name>/ (every build replays that corpus in suite unit).
set -uo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-600}
shift $(($# > 0 ? 1 : 0))
fuzzers=("$@")
all=(npy_header_fuzzer zip_directory_fuzzer sidecar_fuzzer deflate_read_fuzzer
     growing_member_fuzzer)
[ ${#fuzzers[@]} -eq 0 ] && fuzzers=("${all[@]}")
jobs=${JOBS:-$(nproc)}

bash tools/install-deps.sh || exit 1
if [ ! -d build-asan/meson-private ]; then
  CC=clang CXX=clang++ meson setup build-asan -Db_sanitize=address,undefined -Db_lundef=false \
    -Dfuzz=true || exit 1
fi
meson compile -C build-asan "${fuzzers[@]/#/tests/fuzz/}" || exit 1

export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ASAN_OPTIONS=detect_leaks=1
campaign=build-asan/fuzz-campaign
echo "fuzzing ${fuzzers[*]} for ${seconds} s each, ${jobs} at a time; logs in $campaign/<name>.log"
running=0
for f in "${fuzzers[@]}"; do
  if [ "$running" -ge "$jobs" ]; then
    wait -n
    running=$((running - 1))
  fi
  mkdir -p "$campaign"
  tests/fuzz/run_fuzzer.sh "build-asan/tests/fuzz/$f" "tests/fuzz/corpus/${f%_fuzzer}" \
    "$campaign/$f" "$seconds" >"$campaign/$f.log" 2>&1 &
  running=$((running + 1))
done
wait

status=0
for f in "${fuzzers[@]}"; do
  stats=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$campaign/$f.log" | tail -1)
  findings=$(ls "$campaign/$f/artifacts" 2>/dev/null | wc -l)
  printf '%-24s %s\n' "$f" "${stats:-(no DONE line: see $campaign/$f.log)}"
  if [ "$findings" -gt 0 ]; then
    status=1
    ls "$campaign/$f/artifacts" | sed "s|^|    finding: $campaign/$f/artifacts/|"
  fi
done
exit $status
