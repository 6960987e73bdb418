#!/usr/bin/env bash
# Installs the Debian 12 packages npzfs needs to build, test and benchmark. Does nothing
# when they are all present already. Needs root (or sudo) only when something is missing.
set -euo pipefail

# clang and libclang-rt-14-dev: the fuzzers (libFuzzer is clang's -fsanitize=fuzzer, its
# runtime is in libclang-rt-14-dev) and the ASan+UBSan build that also runs them.
# libisal-dev: ISA-L, the fast inflate engine (zlib is the fallback).
packages=(build-essential meson ninja-build pkg-config libfuse3-dev fuse3 libzip-dev
          zlib1g-dev libisal-dev googletest libgtest-dev python3-numpy python3-pytest zip unzip
          clang libclang-rt-14-dev)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "install-deps: installing ${missing[*]}" >&2
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
