#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test suite. The README's test command and
# what CI runs (.ci/run). Four build directories, each serving the suites that need it:
#
#   build         gcc, the normal build            unit + mount
#   build-asan    clang, ASan+UBSan, -Dfuzz=true   unit + mount (sanitized daemon and npz)
#                                                  + fuzz (each fuzzer FUZZ_SECONDS, 60 s)
#   build-noisal  gcc, -Disal=disabled (zlib)      read   (only the targets it needs)
#   build-tsan    gcc, ThreadSanitizer             read + threads + concurrent, less rss
#                                                  (RSS ceilings; only their targets)
#
# Two lanes run side by side (the CI machine has 2 cores): [build, build-tsan] and
# [build-asan, build-noisal], about equally long. Output lines carry the lane's name. The last line is "N passed, N failed":
# the sum over every meson test run (a build that fails counts as one failed test); the exit
# status is non-zero when any build or test failed.
#
#   tools/test.sh                  everything
#   tools/test.sh asan tsan        only these (build, asan, noisal, tsan)
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

bash tools/install-deps.sh || { echo "install-deps failed"; echo "0 passed, 1 failed"; exit 1; }

werror=false
# Under CI ($CI set, and not 0, false or no, as the tests read it) every test must run.
in_ci=false
case "${CI:-}" in "" | 0 | false | no) ;; *) in_ci=true ;; esac
$in_ci && werror=true

# The mount tests need /dev/fuse. Without it they are skipped locally, and fail under CI
# (tests/conftest.py): say so up front.
if [ ! -e /dev/fuse ]; then
  [ "$(id -u)" -eq 0 ] && modprobe fuse 2>/dev/null
  [ -e /dev/fuse ] || echo "WARNING: /dev/fuse is missing: the mount tests will" \
    "$($in_ci && echo "FAIL (CI is set)" || echo "be skipped")"
fi
fuzz_seconds=${FUZZ_SECONDS:-60}
wanted=("$@")
[ ${#wanted[@]} -eq 0 ] && wanted=(build asan noisal tsan)
want() { [[ " ${wanted[*]} " == *" $1 "* ]]; }

results=$(mktemp -d /tmp/npzfs-test-results.XXXXXX)
trap 'rm -rf "$results"' EXIT

# Adds a meson test JSON log's counts to $results/<tag> as "passed failed".
count() {  # tag json
  local tag=$1 json=$2
  if [ ! -s "$json" ]; then
    echo "0 1" >"$results/$tag"  # the build failed, or no test ran
    return
  fi
  /usr/bin/python3 - "$json" "$results/$tag.failures" >"$results/$tag" <<'EOF'
import json, sys
ok = bad = 0
with open(sys.argv[2], "w") as failures:
    for line in open(sys.argv[1]):
        test = json.loads(line)
        r = test.get("result")
        if r in ("OK", "EXPECTEDFAIL"):
            ok += 1
        elif r != "SKIP":
            bad += 1
            # The end of its output, so that a CI log cut to its last lines still shows why.
            tail = (test.get("stdout") or "").splitlines()[-40:]
            failures.write(f"--- {test.get('name')}: {r}\n" + "".join(f"  {l}\n" for l in tail))
print(ok, bad)
EOF
}

# Records how long a step took (for the summary at the end).
timed() {  # tag command...
  local tag=$1 start=$SECONDS
  shift
  "$@"
  local rc=$?
  echo "$((SECONDS - start))" >"$results/$tag.seconds"
  return $rc
}

setup() {  # dir, meson setup args...; configures once, then only keeps werror in step
  local dir=$1
  shift
  if [ ! -d "$dir/meson-private" ]; then
    meson setup "$dir" -Dwerror=$werror "$@"
  else
    meson configure "$dir" -Dwerror=$werror "$@" >/dev/null
  fi
}

# Configures, builds all targets (or, with --partial, only what the selected tests need:
# meson test builds their dependencies), runs meson test and counts. Any failure: exit 1.
suite() {  # tag dir [--partial] [setup args...] -- [meson test args...]
  local tag=$1 dir=$2 partial=false
  shift 2
  [ "${1:-}" = "--partial" ] && { partial=true; shift; }
  local args=()
  while [ "$1" != "--" ]; do args+=("$1"); shift; done
  shift
  rm -f "$dir/meson-logs/$tag.json"
  if ! timed "$tag-setup" setup "$dir" "${args[@]}"; then
    echo "$tag: meson setup failed"; echo "0 1" >"$results/$tag"; return 1
  fi
  if ! $partial && ! timed "$tag-compile" meson compile -C "$dir"; then
    echo "$tag: build failed"; echo "0 1" >"$results/$tag"; return 1
  fi
  touch "$results/$tag.built"
  timed "$tag-test" meson test -C "$dir" --logbase "$tag" --print-errorlogs "$@"
  local rc=$?
  count "$tag" "$dir/meson-logs/$tag.json"
  return $rc
}

# ThreadSanitizer of GCC 12 / LLVM 14 cannot map its shadow memory when the kernel
# randomizes mmap with more than 28 bits; then the TSan tests run with ASLR off.
tsan_wrapper=()
if [ "$(cat /proc/sys/vm/mmap_rnd_bits 2>/dev/null || echo 28)" -gt 28 ] &&
    setarch "$(uname -m)" -R true 2>/dev/null; then
  tsan_wrapper=(--wrapper "setarch $(uname -m) -R")
fi

lane_gcc() {
  local rc=0
  if want build; then
    suite build build -- --num-processes 2 || rc=1
  fi
  if want tsan; then
    suite tsan build-tsan --partial -Db_sanitize=thread -Db_lundef=false -- \
      --suite read --suite threads --suite concurrent --no-suite rss --num-processes 2 \
      "${tsan_wrapper[@]}" || rc=1
  fi
  return $rc
}

lane_asan() {
  local rc=0
  if want asan; then
    # libFuzzer is clang's (CC and CXX reach meson setup through the function call only).
    CC=clang CXX=clang++ suite asan build-asan -Db_sanitize=address,undefined \
      -Db_lundef=false -Dfuzz=true -Dfuzz_seconds="$fuzz_seconds" -- --suite unit \
      --suite mount --num-processes 2 || rc=1
    # The fuzzers (built with the rest above): two at a time, each for fuzz_seconds.
    if [ -f "$results/asan.built" ]; then
      suite fuzz build-asan -- --suite fuzz --num-processes 2 || rc=1
    fi
  fi
  # The zlib engine; in this lane because it is the shorter one.
  if want noisal; then
    suite noisal build-noisal --partial -Disal=disabled -- --suite read --num-processes 2 || rc=1
  fi
  return $rc
}

prefix() { sed -u "s/^/[$1] /"; }

start=$SECONDS
( lane_gcc; echo $? >"$results/lane-gcc.rc" ) 2>&1 | prefix gcc &
( lane_asan; echo $? >"$results/lane-asan.rc" ) 2>&1 | prefix asan &
wait

status=0
for lane in gcc asan; do
  [ "$(cat "$results/lane-$lane.rc" 2>/dev/null || echo 1)" -eq 0 ] || status=1
done
passed=0
failed=0
for tag in build asan fuzz noisal tsan; do
  if [ -s "$results/$tag.failures" ]; then
    echo
    echo "Failed in $tag (the last lines of each test's output):"
    cat "$results/$tag.failures"
  fi
done
echo
echo "Summary (seconds of wall time per step; total $((SECONDS - start)) s):"
for tag in build asan fuzz noisal tsan; do
  [ -f "$results/$tag" ] || continue
  read -r p f <"$results/$tag"
  passed=$((passed + p))
  failed=$((failed + f))
  times=""
  for step in setup compile test; do
    [ -f "$results/$tag-$step.seconds" ] && times+=" $step $(cat "$results/$tag-$step.seconds")"
  done
  printf '  %-7s %4d passed, %d failed  (%s )\n' "$tag" "$p" "$f" "$times"
done
[ "$failed" -eq 0 ] || status=1
echo "${passed} passed, ${failed} failed"
exit $status
