#!/usr/bin/python3
"""Generates the benchmark's data set with numpy. Run with /usr/bin/python3.

    gen_data.py DIR --size GiB

Writes into DIR (never into git):
  adc.npy          int16 frames (N, 256, 1024), 512 KiB each: a smooth signal (a few drifting
                   sinusoids and a slow baseline, like an instrument's ADC) plus Gaussian
                   noise. About SIZE GiB.
  feat.npy         float32 frames (N, 128, 1024), 512 KiB each: smooth fields plus noise.
                   About SIZE GiB.
  stored.npz       adc + feat, ZIP_STORED, written as np.savez writes it.
  deflated.npz     adc only, deflated at zlib's default level, as np.savez_compressed.
                   Only one member, so the saved index's size is that member's.
  many.npz         10,000 small members (np.savez), for the mount/ls scenario.
  stamp.json       what was generated; the data is reused when the stamp matches.

The data is realistic on purpose: zeros or random bytes would make deflate either trivial or
impossible and the inflate figures meaningless. Frames are generated a few at a time, so the
generator's memory stays small whatever the size.
"""

import argparse
import json
import os
import shutil
import sys
import time
import zipfile

import numpy as np

STAMP_VERSION = 1
FRAME_BYTES = 512 << 10
CHUNK_FRAMES = 32


def frames_for(size_gib):
    return max(8, int(round(size_gib * (1 << 30) / FRAME_BYTES)))


def adc_frames(count, rng):
    """Yields int16 chunks of shape (k, 256, 1024)."""
    x = np.linspace(0.0, 1.0, 1024, dtype=np.float32)
    rows = np.arange(256, dtype=np.float32)[:, None]
    done = 0
    while done < count:
        k = min(CHUNK_FRAMES, count - done)
        out = np.empty((k, 256, 1024), dtype=np.int16)
        for j in range(k):
            t = np.float32((done + j) * 0.01)
            sig = (1200.0 * np.sin(2 * np.pi * (3.0 * x + 0.02 * rows + t))
                   + 600.0 * np.sin(2 * np.pi * (11.0 * x - 0.05 * rows + 1.7 * t))
                   + 300.0 * np.cos(2 * np.pi * 0.003 * rows + t))
            noise = rng.standard_normal((256, 1024), dtype=np.float32) * np.float32(6.0)
            out[j] = np.rint(sig + noise).astype(np.int16)
        done += k
        yield out


def feat_frames(count, rng):
    """Yields float32 chunks of shape (k, 128, 1024)."""
    x = np.linspace(0.0, 1.0, 1024, dtype=np.float32)
    rows = np.linspace(0.0, 1.0, 128, dtype=np.float32)[:, None]
    done = 0
    while done < count:
        k = min(CHUNK_FRAMES, count - done)
        out = np.empty((k, 128, 1024), dtype=np.float32)
        for j in range(k):
            t = np.float32((done + j) * 0.02)
            field = (np.exp(-((x - 0.5 - 0.3 * np.sin(t)) ** 2) / 0.02)
                     * np.cos(2 * np.pi * (2.0 * rows + t)))
            noise = rng.standard_normal((128, 1024), dtype=np.float32) * np.float32(0.01)
            out[j] = field + noise
        done += k
        yield out


def write_npy(path, dtype, frame_shape, count, chunks):
    """Writes a .npy with numpy's own header writer, frames streamed chunk by chunk."""
    tmp = path + '.tmp'
    with open(tmp, 'wb') as f:
        header = {'descr': np.lib.format.dtype_to_descr(np.dtype(dtype)),
                  'fortran_order': False, 'shape': (count,) + frame_shape}
        np.lib.format.write_array_header_1_0(f, header)  # what np.save writes here
        for chunk in chunks:
            f.write(chunk.tobytes())
    os.replace(tmp, path)


def write_npz(path, members, compression):
    """Writes an archive exactly as np.savez / np.savez_compressed do: zipfile members opened
    with force_zip64=True (numpy 1.24), the .npy bytes streamed in."""
    tmp = path + '.tmp'
    with zipfile.ZipFile(tmp, 'w', compression=compression, allowZip64=True) as zf:
        for key, src in members:
            with open(src, 'rb') as fin, zf.open(key + '.npy', 'w', force_zip64=True) as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
    os.replace(tmp, path)


def write_many(path, count=10000):
    arrays = {'m%05d' % i: np.arange(16, dtype=np.float32) + i for i in range(count)}
    tmp = path + '.tmp.npz'
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('dir')
    ap.add_argument('--size', type=float, default=1.0, help='GiB per member (default 1)')
    ap.add_argument('--seed', type=int, default=6)
    args = ap.parse_args()

    os.makedirs(args.dir, exist_ok=True)
    n = frames_for(args.size)
    want = {'version': STAMP_VERSION, 'frames': n, 'seed': args.seed,
            'numpy': np.__version__}
    stamp_path = os.path.join(args.dir, 'stamp.json')
    names = ['adc.npy', 'feat.npy', 'stored.npz', 'deflated.npz', 'many.npz']
    try:
        with open(stamp_path) as f:
            if json.load(f) == want and all(
                    os.path.exists(os.path.join(args.dir, x)) for x in names):
                print('gen_data: reusing data in %s' % args.dir, file=sys.stderr)
                return 0
    except (OSError, ValueError):
        pass
    if os.path.exists(stamp_path):
        os.unlink(stamp_path)

    rng = np.random.default_rng(args.seed)
    p = lambda name: os.path.join(args.dir, name)  # noqa: E731
    steps = [
        ('adc.npy', lambda: write_npy(p('adc.npy'), np.int16, (256, 1024), n,
                                      adc_frames(n, rng))),
        ('feat.npy', lambda: write_npy(p('feat.npy'), np.float32, (128, 1024), n,
                                       feat_frames(n, rng))),
        ('stored.npz', lambda: write_npz(p('stored.npz'),
                                         [('adc', p('adc.npy')), ('feat', p('feat.npy'))],
                                         zipfile.ZIP_STORED)),
        ('deflated.npz', lambda: write_npz(p('deflated.npz'), [('adc', p('adc.npy'))],
                                           zipfile.ZIP_DEFLATED)),
        ('many.npz', lambda: write_many(p('many.npz'))),
    ]
    for name, step in steps:
        t0 = time.monotonic()
        step()
        print('gen_data: wrote %s (%.1f MiB) in %.1f s' % (
            name, os.path.getsize(p(name)) / 2**20, time.monotonic() - t0), file=sys.stderr)
    with open(stamp_path, 'w') as f:
        json.dump(want, f)
    return 0


if __name__ == '__main__':
    sys.exit(main())
