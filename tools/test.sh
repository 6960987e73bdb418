#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test: the whole suite on a normal build,
# then the unit tests again under AddressSanitizer and UndefinedBehaviorSanitizer.
# Ends with one line "N passed, N failed" (the sum of both meson test runs).
set -uo pipefail
cd "$(dirname "$0")/.."

bash tools/install-deps.sh || { echo "install-deps failed"; echo "0 passed, 1 failed"; exit 1; }

werror=false
[ -n "${CI:-}" ] && werror=true

passed=0
failed=0
status=0

# Adds the Ok/Fail counts of a meson test log to the totals.
count() {
  local log=$1 ok fail
  ok=$(grep -E '^Ok:' "$log" | tail -1 | awk '{print $2}')
  fail=$(grep -E '^(Fail|Timeout|Unexpected Pass):' "$log" | awk '{s+=$NF} END {print s+0}')
  passed=$((passed + ${ok:-0}))
  failed=$((failed + ${fail:-0}))
}

run_suite() {  # builddir, setup args..., -- test args...
  local dir=$1; shift
  local setup=() ; while [ "$1" != "--" ]; do setup+=("$1"); shift; done; shift
  if [ ! -d "$dir" ]; then
    meson setup "$dir" -Dwerror=$werror "${setup[@]}" || { failed=$((failed + 1)); status=1; return; }
  else
    meson configure "$dir" -Dwerror=$werror >/dev/null
  fi
  if ! meson compile -C "$dir"; then
    failed=$((failed + 1)); status=1; return
  fi
  meson test -C "$dir" --print-errorlogs "$@" 2>&1 | tee "$dir/test-summary.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  count "$dir/test-summary.log"
}

run_suite build -- --num-processes 2
run_suite build-asan -Db_sanitize=address,undefined -Db_lundef=false -- --suite unit

echo "${passed} passed, ${failed} failed"
exit $status
