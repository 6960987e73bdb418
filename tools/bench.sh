#!/usr/bin/env bash
# The npzfs benchmark: builds npzfs in release mode, generates realistic data with
# numpy, runs the scenarios against their baselines and prints the table. The table is
# also written as markdown to BUILD/bench-results.md, for the README's Performance section
# (BUILD/bench-results-partial.md for a run with --only).
#
#   tools/bench.sh [--size GiB] [--runs N] [--cache MiB] [--only 1,3,...] [--build-dir DIR]
#                  [--profile perf|strace]
#
# --size     GiB per member (default 1; --size 0.1 is a quick development run)
# --runs     runs per scenario (default 5); the table shows the median and min–max
# --cache    cache=MiB passed to every mount (default 128)
# --only     run only these scenario numbers
# --build-dir  release build directory (default build-release)
# --profile  profile the first daemon of each scenario into BUILD/bench-profile/ (the
#            profiled runs are slower: use for diagnosis, not for the published table)
#
# Needs root (or sudo) only if tools/install-deps.sh has something to install. Data goes to
# BUILD/bench-data (about 4.5× --size GiB of disk) and is reused while --size is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

build=build-release
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --size | --runs | --cache | --only | --profile) args+=("$1" "$2"); shift 2 ;;
    --build-dir) build=$2; shift 2 ;;
    -h | --help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

bash tools/install-deps.sh

if [ ! -d "$build" ]; then
  meson setup "$build" --buildtype=release >/dev/null
fi
if [ "$(meson introspect "$build" --buildoptions |
        /usr/bin/python3 -c 'import json,sys; print([o["value"] for o in json.load(sys.stdin)
                                                   if o["name"] == "buildtype"][0])')" != release ]; then
  echo "bench.sh: $build is not a release build; use another --build-dir" >&2
  exit 2
fi
# Build everything; if part of the tree does not build, build what the benchmark needs one
# target at a time, so the scenarios that can run still do (the others report "not run").
if ! ninja -C "$build" -j2 >/dev/null; then
  echo "bench.sh: full build failed; building the benchmark's targets one by one" >&2
  for t in tools/bench/bench_baseline fs/npzfs tools/npz; do
    ninja -C "$build" -j2 "$t" >/dev/null || echo "bench.sh: could not build $t" >&2
  done
fi

exec /usr/bin/python3 tools/bench/bench.py --build "$build" "${args[@]}"
