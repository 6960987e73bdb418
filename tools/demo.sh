#!/usr/bin/env bash
# The main job, end to end, on a sample archive:
#   numpy writes data.npz -> npzfs mounts it -> numpy reads a deflated member with mmap ->
#   frames are appended through the mount -> npz umount finalizes -> the new archive is shown.
# Installs what is missing and builds first. Leaves its files in a temp dir it prints.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "dependencies and build (meson compile shows its progress)"
bash tools/install-deps.sh
[ -d build ] || meson setup build >/dev/null
meson compile -C build

npzfs=$root/build/fs/npzfs
npz=$root/build/tools/npz
py=/usr/bin/python3
work=$(mktemp -d /tmp/npzfs-demo.XXXXXX)
mnt=$work/mnt
cleanup() {
  if mountpoint -q "$mnt" 2>/dev/null; then fusermount3 -u "$mnt" 2>/dev/null || fusermount3 -u -z "$mnt"; fi
}
trap cleanup EXIT

step "numpy writes a sample archive: $work/data.npz (np.savez_compressed)"
$py - "$work/data.npz" <<'PY'
import sys, numpy as np
t = np.arange(2000 * 256)
adc = (1000 * np.sin(t / 500.0) + np.random.default_rng(1).normal(0, 20, t.size)).astype('<i2')
np.savez_compressed(sys.argv[1], adc=adc.reshape(2000, 256), tx=np.linspace(0, 1, 64, dtype='<f4'))
PY
ls -l "$work/data.npz"

step "mount it: npzfs data.npz mnt/ (frames declared for new raw members: frame=raw*:int16:256)"
mkdir -p "$mnt"
"$npzfs" -o 'frame=raw*:int16:256' "$work/data.npz" "$mnt"
ls -l "$mnt"

step "numpy reads a deflated member through the mount with mmap_mode='r'"
$py - "$mnt" "$work/data.npz" <<'PY'
import sys, numpy as np
a = np.load(sys.argv[1] + '/adc.npy', mmap_mode='r')
ref = np.load(sys.argv[2])['adc']
print('adc.npy:', type(a).__name__, a.dtype, a.shape, ' frames 5..8 equal:', np.array_equal(a[5:8], ref[5:8]))
PY

step "append frames: np.save into a new file, and raw frames with dd"
$py - "$mnt" <<'PY'
import sys, numpy as np
with open(sys.argv[1] + '/steps.npy', 'wb') as f:
    np.save(f, np.arange(10 * 3, dtype='<f8').reshape(10, 3))
PY
head -c $((256 * 2 * 100)) /dev/urandom > "$work/raw.bin"
dd if="$work/raw.bin" of="$mnt/raw_adc.npy" bs=4096 status=none
$py -c "import numpy as np, sys; a = np.load(sys.argv[1], mmap_mode='r'); print('growing raw_adc.npy as numpy sees it:', a.dtype, a.shape)" "$mnt/raw_adc.npy"
ls -l "$mnt"

step "unmount: npz umount waits until the new members are finalized into data.npz"
"$npz" umount "$mnt"

step "the finalized archive"
"$npz" ls "$work/data.npz"
$py - "$work/data.npz" <<'PY'
import sys, numpy as np
z = np.load(sys.argv[1])
for k in z.files:
    print(f'  np.load: {k:8s} {str(z[k].dtype):6s} {z[k].shape}')
PY
echo
echo "demo files are in $work"
