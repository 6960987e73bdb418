#!/usr/bin/python3
"""The npzfs benchmark driver. tools/bench.sh builds everything and runs this.

    bench.py --build DIR [--size GiB] [--runs N] [--cache MiB] [--only 1,3,...]

Runs the scenarios (numbered rows, one per target) against their baselines, each
`--runs` times, in one process and on one data set, and prints a table (scenario, median,
min-max, baseline median, ratio, target, pass/miss). The same table is written as markdown to
DIR/bench-results.md (DIR/bench-results-partial.md for a run with --only).

Honesty rules this file keeps (a miss with an honest profile beats a pass obtained by
bending the scenario):
- Every baseline is measured in the same run, on the same bytes, interleaved with the
  scenario's own runs so that machine noise hits both alike.
- "Archive in page cache" means the archive (and the baseline's plain file) is read once
  before timing; the page cache is never dropped, because no scenario asks for it. Where a
  scenario must reach the daemon rather than the kernel's cache of the mounted file
  (scenario 4: random reads after a full pass), only that file's cached pages are evicted,
  with posix_fadvise(DONTNEED) before each timed read; the archive's pages stay cached.
- A scenario that cannot run (npzfs not built, daemon error) is reported as such, never as
  a pass.
- Only processes this script started are stopped, and every mount it made is unmounted.
"""

import argparse
import atexit
import json
import os
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import threading
import time
import zipfile
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
PYTHON = '/usr/bin/python3'
FRAME_BYTES = 512 << 10
SPAN_SPACING = 256 << 10  # npzfs's checkpoint spacing (ArchiveOptions::checkpoint_spacing)
DEFLATE_CHUNK = 256 << 10  # the chunk of npzfs's parallel and background deflate
# A deflated shadow's index (core/write/deflate_shadow.h): a header, then a record per chunk.
SHADOW_HEADER = 32
SHADOW_RECORD = 16  # compressed size, chunk CRC, deflate bytes' CRC, record CRC
RANDOM_READS = 200
DEFLATE_LEVEL = 6  # np.savez_compressed's level (zlib's default); mounts use compress=6
BIG_FILE = 16 << 20  # a new file this big could hold decompressed data


METHOD = [
    'Ratio: time rows are median / baseline median; throughput rows (3, 9) are baseline '
    'median / median, i.e. npzfs throughput relative to the baseline.',
    'Every mount is a fresh `npzfs -f` daemon; archives and plain files are read once before '
    'timing (page cache warm); the page cache is never dropped.',
    '1-2: `cat` of the stored member to /dev/null on a fresh mount, then again on the same '
    'mount; baseline `cat` of the plain .npy with the same bytes.',
    '3: `cat` of the deflated member, fresh mount with `-o index=off`; baseline '
    '`bench_baseline inflate` (pread + zlib inflate, one thread, no CRC).',
    '3 (ISA-L row): `bench_baseline inflate-isal`, the same loop as the zlib baseline with '
    'isal_inflate: the engine\'s own speed, for reference.',
    '3b: `cat` of the deflated member on a fresh daemon with the sidecar from `npz index`; '
    'baseline `bench_baseline inflate` (zlib, one thread).',
    '6b (fresh): as 6 on a fresh daemon with `-o index=off`; baseline: `bench_baseline '
    'inflate` of the whole member (in-process zlib, one thread).',
    '1, 2, 6 (verify=off rows): the stored scenarios on fresh daemons with the default '
    'verification, against the same with `-o verify=off`, interleaved.',
    '12: an archive whose member is one fixed-Huffman deflate block of --size GiB of zeros; '
    '`cat` on a fresh daemon with `-o index=off` against `bench_baseline inflate`; the '
    'daemon\'s VmHWM.',
    '4: after 3\'s full pass on the same mount (and the daemon idle: its indexer done), 200 `pread`s of a random 512 KiB frame, '
    'each after `posix_fadvise(DONTNEED)` on the mounted file (so the read reaches the daemon; '
    'the archive stays cached); baseline: zran-style inflate of one whole 1 MiB span from a '
    'random access point (`bench_baseline spans`). The row value is the median over runs of '
    'each run\'s p50 / p99.',
    '5: fresh daemon with the sidecar from `npz index`; open + pread of one random frame; '
    '"no full pass" is checked from the daemon\'s CPU time.',
    '6: a fresh mount per run; /usr/bin/python3 times np.load(mmap_mode="r") plus copying 200 '
    'random frames; the baseline does the same on the plain .npy.',
    '7: VmHWM of every daemon in 1-6; temp files: the daemon\'s open fds sampled every 20 ms '
    'during a full inflate, and new files >= 16 MiB in /tmp, /var/tmp, /dev/shm and the data '
    'dirs checked for member bytes.',
    '8: size of the sidecar (one deflated member in the archive) / the member\'s uncompressed '
    'size.',
    '9-10: `dd bs=1M` of a float32 .npy into a new archive\'s mount (`-o spool=` on the same '
    'filesystem as the baselines); finalize = from `fusermount3 -u` to the daemon\'s exit; '
    'baselines `dd` to a plain file, `cp` + fsync of the spool file (stored), '
    '`bench_baseline deflate` at the same level (one thread; compress written quickly: '
    'unmounted right after dd), `cp` of the compressed bytes (the background deflater\'s '
    'shadow file, no fsync, after an untimed `cp` of them as for `dd` below; compress '
    'written slowly enough: unmounted once the background work has caught up). The '
    'quarter-size row uses the first quarter of the frames. Each '
    '`dd` (through the mount, and the baseline) starts after a `sync`: otherwise it is '
    'throttled by whatever the runs before it left for the disk to write (the baseline alone '
    'varied 5x between runs). The two `dd` run back to back (the deflate baseline runs after '
    'the finalize), after an untimed `dd` to the same plain file: this VM reports free memory '
    'to its host (free page reporting), and a `dd` into pages of page cache the host took '
    'back (any `dd` that follows some 20 s of other work) runs 3x slower.',
    '10s: adc.npy packed by `npz pack --compress` (independent 256 KiB chunks, seek '
    'table in the central directory), each run on fresh daemons with `-o index=off` (no '
    'sidecar is read or written): open + pread of one random frame (as 5), `cat` against '
    '`bench_baseline inflate` of the same member (zlib, one thread), np.load mmap of 200 '
    'random frames (as 6).',
    '14: `npz pack --compress` of adc.npy (all cores) against `bench_baseline deflate` of it '
    '(one thread, level 6); the size row compares the member with np.savez_compressed\'s '
    '(deflated.npz).',
    '13: a 1 MiB .npy added to sparse archives of 1 and 8 GiB (eight stored members of zeros, '
    'holes on disk; regenerated before every run; each timed step starts after a sync): '
    'finalize through a fresh mount (from `fusermount3 -u` to the exit) against the same '
    'finalize into an empty archive and '
    'against Python zipfile\'s append mode (timed in-process, no fsync, as zipfile does it); '
    '`npz add` (a process) against the same zipfile append. Peak extra disk: the largest '
    'growth of the allocated blocks of the files next to the archive, sampled every 0.5 ms '
    'during the finalize. For reference, the same unmount of a mount given no new file '
    '(`fusermount3 -u` and the daemon\'s exit, nothing to finalize) against the zipfile append, '
    'and the zipfile append made crash-atomic the way npzfs appends (an undo journal fsynced '
    'with its directory before the archive is touched, the archive fsynced, the journal '
    'removed and the directory fsynced: the least that protocol costs on this disk) against '
    'the plain zipfile append.',
    '11: mount = from starting the daemon until the mount point is live; then the first '
    '`ls -l` on it.',
]


# Writes a zip with one member, zeros.bin: one fixed-Huffman deflate block (length-258,
# distance-1 matches, repeated as whole bytes once the bit writer is byte-aligned) of `size`
# zero bytes. Run with /usr/bin/python3 -c.
ONE_BLOCK_WRITER = r'''
import struct, zlib
def write_one_block_zip(path, size):
    out = bytearray(); st = [0, 0]
    def bits(v, n):
        st[0] |= v << st[1]; st[1] += n
        while st[1] >= 8:
            out.append(st[0] & 0xff); st[0] >>= 8; st[1] -= 8
    def code(c, n): bits(int(format(c, '0%db' % n)[::-1], 2), n)
    def match258(): code(0xc5, 8); code(0, 5)
    bits(1, 1); bits(1, 2); code(0x30, 8); left = size - 1
    while left >= 258 and st[1]:
        match258(); left -= 258
    mark = len(out)
    for _ in range(8): match258()
    group = bytes(out[mark:]); del out[mark:]; left -= 8 * 258
    groups = left // (8 * 258); out += group * (groups + 1); left -= groups * 8 * 258
    while left >= 258:
        match258(); left -= 258
    for _ in range(left): code(0x30, 8)
    code(0, 7)
    if st[1]: bits(0, 8 - st[1])
    crc = 0; zeros = bytes(1 << 24); n = size
    while n:
        k = min(n, len(zeros)); crc = zlib.crc32(zeros[:k], crc); n -= k
    name = b'zeros.bin'
    def header(central):
        h = struct.pack('<I', 0x02014b50 if central else 0x04034b50)
        if central: h += struct.pack('<H', 0x031e)
        h += struct.pack('<HHHHHIIIHH', 20, 0, 8, 0, 0x21, crc, len(out), size, len(name), 0)
        if central: h += struct.pack('<HHHII', 0, 0, 0, 0o100644 << 16, 0)
        return h + name
    local, central = header(False), header(True)
    with open(path, 'wb') as f:
        f.write(local); f.write(out); f.write(central)
        f.write(struct.pack('<IHHHHIIH', 0x06054b50, 0, 0, 1, 1, len(central),
                            len(local) + len(out), 0))
'''


def log(msg):
    print('[bench %s] %s' % (time.strftime('%H:%M:%S'), msg), file=sys.stderr, flush=True)


class NotRun(Exception):
    """A scenario that could not run (missing binary, daemon failure)."""


# ---------------------------------------------------------------------------------------
# Processes and mounts


ACTIVE_DAEMONS = []


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def timed(cmd, **kw):
    """Runs cmd with stdout to /dev/null unless given; returns wall seconds."""
    kw.setdefault('stdout', subprocess.DEVNULL)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, **kw)
    return time.perf_counter() - t0


def timed_after_untimed_run(cmd, out, sync=False):
    """Runs cmd twice, removing the file `out` it writes after each run (and `sync` before
    each when asked); returns the second run's wall seconds. The first run leaves freed page
    cache for the second to write into: this VM reports free memory to its host, and a write
    into pages the host took back runs 3x slower (see METHOD)."""
    t = 0.0
    for _ in range(2):
        if sync:
            os.sync()
        t = timed(cmd)
        os.unlink(out)
    return t


class Daemon:
    """One `npzfs -f ARCHIVE MNT [-o OPTS]` process that this script started."""

    def __init__(self, env, archive, mnt, opts=(), tag=''):
        self.env = env
        self.tag = tag
        self.profiler = None
        self.archive = archive
        self.mnt = mnt
        self.opts = list(opts)
        self.proc = None
        self.log_path = os.path.join(env.work, 'npzfs-%d.log' % len(env.daemon_logs))
        env.daemon_logs.append(self.log_path)
        self.mount_seconds = None
        self.finalize_seconds = None

    def start(self):
        if not os.path.exists(self.env.npzfs):
            raise NotRun('npzfs not built (%s)' % self.env.npzfs)
        os.makedirs(self.mnt, exist_ok=True)
        if os.path.ismount(self.mnt):
            raise NotRun('%s is already a mount point' % self.mnt)
        cmd = [self.env.npzfs, '-f', self.archive, self.mnt]
        if self.opts:
            cmd += ['-o', ','.join(self.opts)]
        logf = open(self.log_path, 'wb')
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=logf, stderr=logf, stdin=subprocess.DEVNULL)
        logf.close()
        ACTIVE_DAEMONS.append(self)
        deadline = t0 + 30
        while not os.path.ismount(self.mnt):
            if self.proc.poll() is not None:
                ACTIVE_DAEMONS.remove(self)
                raise NotRun('npzfs exited with %d before mounting: %s' % (
                    self.proc.returncode, self.log_tail()))
            if time.perf_counter() > deadline:
                self.kill()
                raise NotRun('npzfs did not mount within 30 s: %s' % self.log_tail())
            time.sleep(0.0005)
        self.mount_seconds = time.perf_counter() - t0
        self.start_profiler()
        return self

    def start_profiler(self):
        """--profile perf|strace: profiles the first daemon of each scenario tag (the
        profiler slows the daemon down, so a profiled run is not for the table)."""
        kind = self.env.profile
        if not kind or self.tag in self.env.profiled:
            return
        self.env.profiled.add(self.tag)
        base = os.path.join(self.env.profile_dir, '%s-%s' % (self.tag, kind))
        if kind == 'perf':
            cmd = ['perf', 'record', '-q', '-g', '-F', '999', '-o', base + '.data', '-p',
                   str(self.proc.pid)]
        else:
            cmd = ['strace', '-c', '-f', '-w', '-o', base + '.txt', '-p', str(self.proc.pid)]
        self.profiler = (subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL), base, kind)
        time.sleep(0.3)  # let the profiler attach before the scenario starts

    def stop_profiler(self):
        if self.profiler is None:
            return
        proc, base, kind = self.profiler
        self.profiler = None
        proc.send_signal(signal.SIGINT)  # perf and strace then write their summaries
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if kind == 'perf':
            with open(base + '.txt', 'w') as f:
                for sort in ('dso', 'dso,sym'):  # libz has no symbols: the dso view first
                    f.flush()
                    subprocess.run(['perf', 'report', '-i', base + '.data', '--stdio',
                                    '--no-children', '--percent-limit', '1', '-g', 'none',
                                    '--sort', sort], stdout=f, stderr=subprocess.DEVNULL)
        log('profile written to %s.txt' % base)

    def log_tail(self, n=400):
        try:
            with open(self.log_path, 'rb') as f:
                return f.read().decode(errors='replace')[-n:].strip() or '(empty log)'
        except OSError:
            return '(no log)'

    def status_kib(self, key):
        with open('/proc/%d/status' % self.proc.pid) as f:
            for line in f:
                if line.startswith(key + ':'):
                    return int(line.split()[1])
        return 0

    def peak_rss_mib(self):
        return self.status_kib('VmHWM') / 1024.0

    def cpu_seconds(self):
        with open('/proc/%d/stat' % self.proc.pid) as f:
            fields = f.read().rsplit(')', 1)[1].split()
        ticks = os.sysconf('SC_CLK_TCK')
        return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime

    def open_files(self):
        """(target, size) of every regular file / memfd the daemon holds open."""
        out = []
        fd_dir = '/proc/%d/fd' % self.proc.pid
        for name in os.listdir(fd_dir):
            try:
                target = os.readlink(os.path.join(fd_dir, name))
                st = os.stat(os.path.join(fd_dir, name))
            except OSError:
                continue
            if target.startswith('/memfd:') or (target.startswith('/') and
                                                not target.startswith('/dev/') and
                                                os.path.stat.S_ISREG(st.st_mode)):
                out.append((target, st.st_size))
        return out

    def stop(self, timeout=600):
        """Unmounts and waits for the daemon to exit (finalize runs after fusermount3 -u
        returns: the daemon finalizes in its destroy handler, after the kernel has let go of
        the mount point). Returns the seconds from the unmount request to the exit."""
        self.stop_profiler()
        t0 = time.perf_counter()
        r = subprocess.run(['fusermount3', '-u', self.mnt], capture_output=True, text=True)
        if r.returncode != 0:
            log('fusermount3 -u %s failed: %s' % (self.mnt, r.stderr.strip()))
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise NotRun('npzfs did not exit within %d s after unmount' % timeout)
        self.finalize_seconds = time.perf_counter() - t0
        if self in ACTIVE_DAEMONS:
            ACTIVE_DAEMONS.remove(self)
        if self.proc.returncode != 0:
            raise NotRun('npzfs exited with %d: %s' % (self.proc.returncode, self.log_tail()))
        return self.finalize_seconds

    def kill(self):
        """Last resort for our own daemon: lazy unmount, then SIGTERM/SIGKILL by PID."""
        self.stop_profiler()
        subprocess.run(['fusermount3', '-u', '-z', self.mnt], capture_output=True)
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self in ACTIVE_DAEMONS:
            ACTIVE_DAEMONS.remove(self)


def cleanup():
    for d in list(ACTIVE_DAEMONS):
        log('cleaning up mount %s (pid %d)' % (d.mnt, d.proc.pid))
        d.kill()


atexit.register(cleanup)
# SIGTERM (timeout, kill PID) becomes SystemExit, so `finally` blocks and the atexit cleanup
# still unmount what this script mounted.
signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


# ---------------------------------------------------------------------------------------
# Data helpers


def member_info(archive, name):
    """(data_offset, compressed_size, uncompressed_size, method) of a zip member, the data
    offset taken from the local header (numpy's central headers lack the ZIP64
    extra that the local header has)."""
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo(name)
    with open(archive, 'rb') as f:
        f.seek(info.header_offset)
        local = f.read(30)
    if local[:4] != b'PK\x03\x04':
        raise RuntimeError('%s: bad local header for %s' % (archive, name))
    name_len, extra_len = struct.unpack('<HH', local[26:30])
    return (info.header_offset + 30 + name_len + extra_len, info.compress_size,
            info.file_size, info.compress_type)


def npy_layout(path):
    """(header_length, frame_count, frame_bytes) of a C-order .npy of frames."""
    code = ('import numpy as np, sys, json\n'
            'f = open(sys.argv[1], "rb")\n'
            'v = np.lib.format.read_magic(f)\n'
            'shape, fo, dt = np.lib.format._read_array_header(f, v)\n'
            'n = 1\n'
            'for s in shape[1:]: n *= s\n'
            'print(json.dumps([f.tell(), shape[0], n * dt.itemsize]))\n')
    out = subprocess.run([PYTHON, '-c', code, path], check=True, capture_output=True,
                         text=True).stdout
    return tuple(json.loads(out))


def warm(path):
    with open(path, 'rb') as f:
        while f.read(8 << 20):
            pass


def random_frames(count, n, seed):
    import random
    rng = random.Random(seed)
    return [rng.randrange(n) for _ in range(count)]


def percentile(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, (len(v) * p) // 100)]


def scan_big_new_files(roots, since, exclude):
    """Files of at least BIG_FILE bytes modified since `since` under `roots`."""
    found = []
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            # Never descend into mounts (ours or anyone's).
            dirnames[:] = [d for d in dirnames
                           if not os.path.ismount(os.path.join(dirpath, d))]
            for fn in filenames:
                p = os.path.join(dirpath, fn)
                try:
                    st = os.lstat(p)
                except OSError:
                    continue
                if (os.path.stat.S_ISREG(st.st_mode) and st.st_size >= BIG_FILE and
                        st.st_mtime >= since and os.path.realpath(p) not in exclude):
                    found.append((p, st.st_size))
    return found



ZERO_GIB_CRC = []


def zero_gib_crc():
    """CRC-32 of 1 GiB of zero bytes (computed once)."""
    if not ZERO_GIB_CRC:
        block, crc = bytes(1 << 20), 0
        for _ in range(1024):
            crc = zlib.crc32(block, crc)
        ZERO_GIB_CRC.append(crc)
    return ZERO_GIB_CRC[0]


def make_sparse_archive(path, gib):
    """An archive of `gib` stored members of 1 GiB of zeros each, written as holes (it takes
    almost no disk), with ZIP64 records where offsets pass 4 GiB. Returns the size of its
    central directory and end records (what an append overwrites)."""
    size, crc = 1 << 30, zero_gib_crc()
    entries, offset = [], 0
    with open(path, 'wb') as f:
        for i in range(gib):
            name = b'z%d.bin' % i
            f.seek(offset)
            f.write(struct.pack('<IHHHHHIIIHH', 0x04034b50, 20, 0, 0, 0, 0x21, crc, size, size,
                                len(name), 0) + name)
            entries.append((name, offset))
            offset += 30 + len(name) + size
        cd = b''
        for name, local in entries:
            extra = struct.pack('<HHQ', 1, 8, local) if local >= 0xFFFFFFFF else b''
            cd += struct.pack('<IHHHHHHIIIHHHHHII', 0x02014b50, 0x031e, 45 if extra else 20, 0,
                              0, 0, 0x21, crc, size, size, len(name), len(extra), 0, 0, 0,
                              0o100644 << 16, min(local, 0xFFFFFFFF)) + name + extra
        end = b''
        if offset >= 0xFFFFFFFF:
            z64 = offset + len(cd)
            end += struct.pack('<IQHHIIQQQQ', 0x06064b50, 44, 0x032d, 45, 0, 0, len(entries),
                               len(entries), len(cd), offset)
            end += struct.pack('<IIQI', 0x07064b50, 0, z64, 1)
        end += struct.pack('<IHHHHIIH', 0x06054b50, 0, 0, len(entries), len(entries), len(cd),
                           min(offset, 0xFFFFFFFF), 0)
        f.seek(offset)
        f.write(cd + end)
    return len(cd) + len(end)


def fsync_path(path, flags=os.O_RDONLY):
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def zipfile_append(archive, src, fsync=False, journal=False):
    """Seconds for Python's zipfile to append `src` as one.npy (in this process, as zipfile
    does it: no fsync; with `fsync`, the archive is fsynced after it). With `journal`, the
    append is made crash-atomic the way npzfs makes its own: an undo journal (the old size
    and the old central directory, which the append overwrites) is written and fsynced, with
    its directory, before the archive is touched; then the archive is fsynced, the journal
    removed and the directory fsynced again. That is the least any append keeping the
    journal protocol can cost on this disk, whatever its code. Starts after a sync, as
    every row of scenario 13 does."""
    os.sync()
    t0 = time.perf_counter()
    directory = os.path.dirname(os.path.abspath(archive))
    undo = os.path.join(directory, '.bench-journal')
    if journal:
        with zipfile.ZipFile(archive) as zf:
            cd_start = zf.start_dir
        with open(archive, 'rb') as f:
            f.seek(cd_start)
            tail = f.read()
        with open(undo, 'wb') as j:
            j.write(struct.pack('<QQ', cd_start + len(tail), cd_start) + tail)
            j.flush()
            os.fsync(j.fileno())
        fsync_path(directory, os.O_RDONLY | os.O_DIRECTORY)
    with zipfile.ZipFile(archive, 'a') as zf:
        zf.write(src, 'one.npy')
    if fsync or journal:
        fsync_path(archive)
    if journal:
        os.unlink(undo)
        fsync_path(directory, os.O_RDONLY | os.O_DIRECTORY)
    return time.perf_counter() - t0


class DiskSampler(threading.Thread):
    """Samples the blocks allocated to the regular files directly in `directory` every
    0.5 ms; `peak - first` is the most extra disk seen."""

    def __init__(self, directory):
        super().__init__(daemon=True)
        self.directory = directory
        self.first = self.usage()
        self.peak = self.first
        self.done = threading.Event()

    def usage(self):
        total = 0
        for entry in os.scandir(self.directory):
            try:
                if entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_blocks * 512
            except OSError:
                pass  # removed meanwhile
        return total

    def run(self):
        while not self.done.is_set():
            self.peak = max(self.peak, self.usage())
            time.sleep(0.0005)

    def finish(self):
        self.done.set()
        self.join()
        self.peak = max(self.peak, self.usage())


# ---------------------------------------------------------------------------------------
# Results


class Row:
    """One line of the table.

    kind: 'time'  -> ratio = median / baseline median (lower is better)
          'thr'   -> ratio = baseline median / median, i.e. throughput relative to the
                     baseline (higher is better)
          'value' -> no baseline; the ratio column may carry a derived figure
    check(median, ratio, row) -> True (pass) / False (miss)."""

    def __init__(self, num, name, kind, unit, target, check, baseline_name=''):
        self.num, self.name, self.kind, self.unit = num, name, kind, unit
        self.target, self.check, self.baseline_name = target, check, baseline_name
        self.values, self.base = [], []
        self.ratio_override = None
        self.extra_fail = []  # reasons that make the row a miss whatever the numbers
        self.error = None

    def median(self):
        return statistics.median(self.values) if self.values else None

    def base_median(self):
        return statistics.median(self.base) if self.base else None

    def ratio(self):
        if self.ratio_override is not None:
            return self.ratio_override
        m, b = self.median(), self.base_median()
        if m is None or b is None or m == 0 or b == 0:
            return None
        return m / b if self.kind == 'time' else b / m

    def result(self):
        if self.error:
            return 'not run' if self.error.startswith('not run') else 'error'
        if not self.values:
            return 'not run'
        if self.extra_fail:
            return 'MISS'
        return 'pass' if self.check(self.median(), self.ratio(), self) else 'MISS'


def fmt(v, unit):
    if v is None:
        return '—'
    if unit == 's':
        if v < 1e-3:
            return '%.0f µs' % (v * 1e6)
        if v < 1:
            return '%.1f ms' % (v * 1e3) if v < 0.1 else '%.0f ms' % (v * 1e3)
        return '%.2f s' % v
    if unit == 'MiB':
        return '%.1f MiB' % v
    if unit == '%':
        return '%.3f %%' % v
    return '%g %s' % (v, unit)


def table_lines(rows, markdown):
    head = ['#', 'Scenario', 'Median', 'Min–max', 'Baseline median', 'Ratio', 'Target',
            'Result']
    body = []
    for r in rows:
        rng = '—'
        if r.values:
            rng = '%s – %s' % (fmt(min(r.values), r.unit), fmt(max(r.values), r.unit))
        base = fmt(r.base_median(), r.unit) if r.base else '—'
        if r.baseline_name and r.base:
            base += ' (%s)' % r.baseline_name
        elif r.baseline_name and not r.base:
            base = r.baseline_name
        ratio = r.ratio()
        if ratio is None:
            ratio_s = '—'
        elif r.unit == '%' or r.kind == 'value':
            ratio_s = '%.2f%%' % (ratio * 100) if r.unit != 's' else '%.2f×' % ratio
        else:
            ratio_s = '%.2f×' % ratio
        body.append([r.num, r.name, fmt(r.median(), r.unit), rng, base, ratio_s, r.target,
                     r.result()])
    if markdown:
        lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
        lines += ['| ' + ' | '.join(c.replace('|', '\\|') for c in b) + ' |' for b in body]
        return lines
    widths = [max(len(str(x[i])) for x in [head] + body) for i in range(len(head))]
    lines = ['  '.join(str(h).ljust(w) for h, w in zip(head, widths))]
    lines.append('  '.join('-' * w for w in widths))
    for b in body:
        lines.append('  '.join(str(c).ljust(w) for c, w in zip(b, widths)))
    return lines


# ---------------------------------------------------------------------------------------
# The benchmark


class Env:
    def __init__(self, args):
        self.build = os.path.abspath(args.build)
        self.npzfs = os.path.join(self.build, 'fs', 'npzfs')
        self.npz = os.path.join(self.build, 'tools', 'npz')
        self.baseline = os.path.join(self.build, 'tools', 'bench', 'bench_baseline')
        self.data = os.path.abspath(args.data or os.path.join(self.build, 'bench-data'))
        self.work = os.path.join(self.build, 'bench-work')
        self.runs = args.runs
        self.size = args.size
        self.cache_mib = args.cache
        self.profile = args.profile
        self.profiled = set()
        self.profile_dir = os.path.join(self.build, 'bench-profile')
        self.daemon_logs = []
        self.notes = []

    def p(self, name):
        return os.path.join(self.data, name)

    def w(self, name):
        return os.path.join(self.work, name)

    def sidecar(self, archive):
        return os.path.join(os.path.dirname(archive), '.%s.npzfs-index' %
                            os.path.basename(archive))

    def note(self, msg):
        log(msg)
        self.notes.append(msg)

    def baseline_json(self, *args):
        out = subprocess.run([self.baseline] + [str(a) for a in args], check=True,
                             capture_output=True, text=True).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]


class Bench:
    def __init__(self, env, only):
        self.env = env
        self.only = only
        self.hwm = []  # (scenario, peak RSS MiB) of every daemon in scenarios 1-6
        self.tempfile_problems = []
        e = env
        self.rows = {}
        R = self.rows
        R['1'] = Row('1', 'Stored: sequential cat, fresh mount', 'time', 's', '≤ 6×',
                     lambda m, r, row: r is not None and r <= 6, 'cat plain .npy')
        R['2'] = Row('2', 'Stored: same member read again', 'time', 's', '≤ 1.5×',
                     lambda m, r, row: r is not None and r <= 1.5, 'cat plain .npy')
        R['3'] = Row('3', 'Deflated: sequential cat, no index', 'thr', 's',
                     '≥ 1.3× throughput', lambda m, r, row: r is not None and r >= 1.3,
                     'zlib inflate')
        R['3i'] = Row('3', 'In-process ISA-L inflate of the member (the engine)', 'thr',
                      's', 'reference', lambda m, r, row: True, 'zlib inflate')
        R['3b'] = Row('3b', 'Deflated: sequential cat, saved index, fresh daemon', 'thr', 's',
                      '≥ 2.5× throughput', lambda m, r, row: r is not None and r >= 2.5,
                      'zlib inflate')
        R['4a'] = Row('4', 'Deflated: 200 random frames after a pass, p50', 'time',
                      's', '≤ 4 ms', lambda m, r, row: m <= 0.004, 'zlib: 1 span p50')
        R['4b'] = Row('4', '… p99', 'time', 's', '≤ 8 ms', lambda m, r, row: m <= 0.008,
                      'zlib: 1 span p99')
        R['5'] = Row('5', 'Saved index, fresh daemon: first frame', 'value', 's',
                     '≤ 8 ms, no full pass', lambda m, r, row: m <= 0.008)
        R['6a'] = Row('6', 'np.load mmap, 200 frames: deflated + index',
                      'time', 's', '≤ 0.5 s', lambda m, r, row: m <= 0.5, 'plain .npy mmap')
        R['6b'] = Row('6', '… stored', 'time', 's', '≤ 0.2 s', lambda m, r, row: m <= 0.2,
                      'plain .npy mmap')
        R['6n'] = Row('6b', 'np.load mmap, 200 frames: deflated, fresh daemon, no index',
                      'time', 's', '≤ 0.8×', lambda m, r, row: r is not None and r <= 0.8,
                      'zlib inflate of the member')
        R['1o'] = Row('1', 'Stored cat, fresh mount: checked vs verify=off', 'time', 's',
                      'report', lambda m, r, row: True, 'verify=off')
        R['2o'] = Row('2', 'Stored cat again: checked vs verify=off', 'time', 's', 'report',
                      lambda m, r, row: True, 'verify=off')
        R['6o'] = Row('6', 'Stored np.load mmap, 200 frames: checked vs verify=off', 'time',
                      's', 'report', lambda m, r, row: True, 'verify=off')
        R['12a'] = Row('12', 'One deflate block of --size GiB: sequential cat', 'thr', 's',
                       '≥ 1× throughput', lambda m, r, row: r is not None and r >= 1.0,
                       'zlib inflate')
        R['12b'] = Row('12', '… daemon peak RSS', 'value', 'MiB', '≤ 64 MiB + cache',
                       lambda m, r, row: m <= 64 + self.cache_budget_mib)
        R['7'] = Row('7', 'Daemon peak RSS (VmHWM) during 1–6', 'value', 'MiB',
                     '≤ 64 MiB + cache + index; no temp files', self.check_rss)
        R['8'] = Row('8', 'Index size of the deflated member', 'value', 'MiB',
                     '≤ 1% (stretch 0.3%)', lambda m, r, row: r is not None and r <= 0.01,
                     'member size')
        R['9'] = Row('9', 'Append through the mount (dd bs=1M)', 'thr', 's',
                     '≥ 0.6× throughput', lambda m, r, row: r is not None and r >= 0.6,
                     'dd to plain file')
        R['9c'] = Row('9', '… with -o compress (level %d)' % DEFLATE_LEVEL, 'thr', 's',
                      '≥ 0.5× throughput', lambda m, r, row: r is not None and r >= 0.5,
                      'dd to plain file')
        R['10a'] = Row('10', 'Finalize: stored', 'time', 's', '≤ 1.5×',
                       lambda m, r, row: r is not None and r <= 1.5, 'cp + fsync')
        R['10q'] = Row('10', '… stored, a quarter of the size', 'time', 's', '≤ 1.5×',
                       lambda m, r, row: r is not None and r <= 1.5, 'cp + fsync')
        R['10b'] = Row('10', 'Finalize: deflated (level %d), written quickly' % DEFLATE_LEVEL,
                       'time', 's', '≤ 0.6×', lambda m, r, row: r is not None and r <= 0.6,
                       'zlib deflate')
        R['10c'] = Row('10', '… deflated, background deflate kept up', 'time', 's', '≤ 1.5×',
                       lambda m, r, row: r is not None and r <= 1.5, 'cp compressed bytes')
        R['10f'] = Row('10s', 'Seekable member (npz pack), no sidecar, fresh daemon: first '
                       'frame', 'value', 's', '≤ 8 ms, no full pass',
                       lambda m, r, row: m <= 0.008 and not row.extra_fail)
        R['10s'] = Row('10s', '… sequential cat', 'thr', 's', '≥ 2.5× throughput',
                       lambda m, r, row: r is not None and r >= 2.5, 'zlib inflate')
        R['10m'] = Row('10s', '… np.load mmap, 200 frames', 'time', 's', '≤ 0.5 s',
                       lambda m, r, row: m <= 0.5, 'plain .npy mmap')
        R['14a'] = Row('14', 'npz pack --compress (level %d)' % DEFLATE_LEVEL, 'time', 's',
                       '≤ 0.6×', lambda m, r, row: r is not None and r <= 0.6, 'zlib deflate')
        R['14b'] = Row('14', 'Compressed size against np.savez_compressed', 'value', 'MiB',
                       '≤ 1.005×', lambda m, r, row: r is not None and r <= 1.005)
        for gib, key, vs_zipfile in ((1, '13a', '13b'), (8, '13c', '13d')):
            R[key] = Row('13', 'Finalize 1 MiB into a %d GiB archive' % gib, 'time', 's',
                         '≤ 1.2×', lambda m, r, row: r is not None and r <= 1.2,
                         'into an empty archive')
            R[vs_zipfile] = Row('13', '… against zipfile append (%d GiB)' % gib, 'time', 's',
                                '≤ 1.5×', lambda m, r, row: r is not None and r <= 1.5,
                                'zipfile append')
        R['13e'] = Row('13', 'Peak extra disk during those finalizes', 'value', 'MiB',
                       '≤ new + old CD + 1 MiB', lambda m, r, row: not row.extra_fail)
        R['13f'] = Row('13', 'npz add 1 MiB into the 8 GiB archive', 'time', 's', '≤ 1.5×',
                       lambda m, r, row: r is not None and r <= 1.5, 'zipfile append')
        R['13g'] = Row('13', 'Unmount with nothing to finalize (in every finalize above)', 'time',
                       's', 'reference', lambda m, r, row: True, 'zipfile append')
        R['13h'] = Row('13', 'zipfile append made crash-atomic by the journal protocol (in-process)',
                       'time', 's', 'reference', lambda m, r, row: True, 'zipfile append')
        R['11a'] = Row('11', 'Mount of a 10,000-member archive', 'value', 's', '≤ 0.5 s',
                       lambda m, r, row: m <= 0.5)
        R['11b'] = Row('11', 'ls -l of its 10,000 members', 'value', 's', '≤ 0.5 s',
                       lambda m, r, row: m <= 0.5)
        self.index_mib = 0.0
        self._probes = None
        self.cache_budget_mib = e.cache_mib

    def check_rss(self, m, r, row):
        limit = 64 + self.cache_budget_mib + self.index_mib
        return max(row.values) <= limit and not self.tempfile_problems

    def wanted(self, num):
        return self.only is None or num in self.only

    def mount_opts(self, *extra):
        return ['cache=%d' % self.env.cache_mib] + list(extra)

    def record_hwm(self, scenario, daemon):
        self.hwm.append((scenario, daemon.peak_rss_mib()))

    def member_probes(self):
        """The first 64 bytes of every 4 KiB block of the member's bytes (adc.npy): a temp
        file holding decompressed spans would contain some of them at 4 KiB-aligned offsets.
        Computed once."""
        if self._probes is None:
            probes = set()
            with open(self.env.p('adc.npy'), 'rb') as f:
                while True:
                    block = f.read(1 << 20)
                    if not block:
                        break
                    for o in range(0, len(block) - 63, 4096):
                        probes.add(block[o:o + 64])
            self._probes = probes
        return self._probes

    def holds_member_data(self, path):
        probes = self.member_probes()
        try:
            with open(path, 'rb') as f:
                while True:
                    block = f.read(1 << 20)
                    if not block:
                        return False
                    for o in range(0, len(block) - 63, 4096):
                        if block[o:o + 64] in probes:
                            return True
        except OSError:
            return False

    def check_no_temp_files(self, daemon, since, scenario, samples):
        """Issue 6: no temp file holds decompressed data. Looks at what the daemon held open
        (`samples`: open_files() lists taken while it worked) and at big files created since
        `since` in the usual temp places; those are judged by content, because other
        programs (compilers, tests) create big temp files on a shared machine too."""
        allowed = {os.path.realpath(daemon.archive)}
        side = self.env.sidecar(daemon.archive)
        seen = set()
        for files in samples:
            for target, size in files:
                t = target.replace(' (deleted)', '')
                if os.path.realpath(t) in allowed or t.startswith(side) or target in seen:
                    continue
                seen.add(target)
                if size >= BIG_FILE or target.endswith('(deleted)') or t.startswith('/memfd:'):
                    self.tempfile_problems.append('%s: the daemon held %s open (%d bytes)' % (
                        scenario, target, size))
        exclude = {os.path.realpath(self.env.p(n)) for n in os.listdir(self.env.data)}
        roots = [r for r in ['/tmp', '/var/tmp', '/dev/shm', self.env.data, self.env.work,
                             os.path.dirname(daemon.archive)] if os.path.isdir(r)]
        ignored = 0
        for p, size in scan_big_new_files(roots, since, exclude):
            if self.holds_member_data(p):
                self.tempfile_problems.append(
                    '%s: new file %s (%d MiB) holds decompressed member data' % (
                        scenario, p, size >> 20))
            else:
                ignored += 1
        self.env.note('scenario %s temp-file check: %d open-file samples of the daemon, %d '
                      'new big file(s) elsewhere without member data (ignored)' % (
                          scenario, len(samples), ignored))

    def sampled_cat(self, daemon, path):
        """cat with the daemon's open files sampled every 20 ms (an untimed pass)."""
        samples = []
        proc = subprocess.Popen(['cat', path], stdout=subprocess.DEVNULL)
        while proc.poll() is None:
            samples.append(daemon.open_files())
            time.sleep(0.02)
        samples.append(daemon.open_files())
        if proc.returncode != 0:
            raise RuntimeError('cat %s failed' % path)
        return samples

    # -- scenarios ---------------------------------------------------------------------

    def scenario_1_2(self):
        e = self.env
        archive, plain = e.p('stored.npz'), e.p('adc.npy')
        warm(archive)
        warm(plain)
        mnt = e.w('mnt')
        for i in range(e.runs):
            self.rows['1'].base.append(timed(['cat', plain]))
            d = Daemon(e, archive, mnt, self.mount_opts(), tag='1-2').start()
            try:
                self.rows['1'].values.append(timed(['cat', os.path.join(mnt, 'adc.npy')]))
                self.rows['2'].base.append(timed(['cat', plain]))
                self.rows['2'].values.append(timed(['cat', os.path.join(mnt, 'adc.npy')]))
                if i == 0:
                    r = subprocess.run(['cmp', plain, os.path.join(mnt, 'adc.npy')],
                                       capture_output=True, text=True)
                    if r.returncode != 0:
                        raise RuntimeError('stored member differs from adc.npy: ' +
                                           r.stdout + r.stderr)
                self.record_hwm('1-2', d)
            finally:
                d.stop()

    def scenario_3_4(self):
        e = self.env
        archive = e.p('deflated.npz')
        off, csize, usize, _ = member_info(archive, 'adc.npy')
        hdr, nframes, frame_bytes = npy_layout(e.p('adc.npy'))
        warm(archive)
        mnt = e.w('mnt')
        span_base = e.baseline_json('spans', archive, off, csize, SPAN_SPACING, RANDOM_READS,
                                    e.runs, 4)
        e.note('span baseline: %d access points, spacing %d KiB' % (
            span_base[0]['points'], SPAN_SPACING >> 10))
        for s in span_base[1:]:
            self.rows['4a'].base.append(s['p50'])
            self.rows['4b'].base.append(s['p99'])
        buf = bytearray(frame_bytes)
        cpu = []
        cpu_reads = []
        for i in range(e.runs):
            self.rows['3'].base.append(
                e.baseline_json('inflate', archive, off, csize)[0]['seconds'])
            self.isal_baseline(archive, off, csize)
            side = e.sidecar(archive)
            if os.path.exists(side):
                os.unlink(side)
            d = Daemon(e, archive, mnt, self.mount_opts('index=off'), tag='3-4').start()
            try:
                member = os.path.join(mnt, 'adc.npy')
                self.rows['3'].values.append(timed(['cat', member]))
                cpu.append(d.cpu_seconds())
                if i == 0:
                    r = subprocess.run(['cmp', e.p('adc.npy'), member], capture_output=True,
                                       text=True)
                    if r.returncode != 0:
                        raise RuntimeError('deflated member differs from adc.npy: ' +
                                           r.stdout + r.stderr)
                # "After the first pass": the indexer may still be learning checkpoints
                # behind the reader; wait until the daemon is idle.
                self.wait_idle(d)
                lat = []
                cpu0 = d.cpu_seconds()
                fd = os.open(member, os.O_RDONLY)
                try:
                    for k in random_frames(RANDOM_READS, nframes, 100 + i):
                        # Evict this file's cached pages (not the archive's), so the read
                        # reaches the daemon instead of the kernel's copy from the full pass.
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                        t0 = time.perf_counter()
                        n = os.preadv(fd, [buf], hdr + k * frame_bytes)
                        lat.append(time.perf_counter() - t0)
                        if n != frame_bytes:
                            raise RuntimeError('short frame read: %d' % n)
                finally:
                    os.close(fd)
                cpu_reads.append(d.cpu_seconds() - cpu0)
                self.rows['4a'].values.append(percentile(lat, 50))
                self.rows['4b'].values.append(percentile(lat, 99))
                self.record_hwm('3-4', d)
            finally:
                d.stop()
            if os.path.exists(side):
                self.rows['3'].extra_fail.append('index=off still wrote %s' % side)
        e.note('scenario 3: daemon CPU time for the full pass: median %.2f s' %
               statistics.median(cpu))
        e.note('scenario 4: daemon CPU time for the 200 random reads: median %.2f s (the '
               'reads reached the daemon, not only the kernel page cache, if this is well '
               'above zero)' % statistics.median(cpu_reads))
        # Untimed extra pass: the daemon's open files sampled while it inflates.
        since = time.time()
        d = Daemon(e, archive, mnt, self.mount_opts('index=off'), tag='3-tempcheck').start()
        try:
            samples = self.sampled_cat(d, os.path.join(mnt, 'adc.npy'))
            self.record_hwm('3', d)
        finally:
            d.stop()
        self.check_no_temp_files(d, since, '3', samples)

    def isal_baseline(self, archive, off, csize):
        """Row 3i: the in-process ISA-L inflate of the member against the zlib baseline of
        the same run (the last one appended to row 3)."""
        if not self.wanted('3'):
            return
        try:
            t = self.env.baseline_json('inflate-isal', archive, off, csize)[0]['seconds']
        except subprocess.CalledProcessError:
            self.rows['3i'].error = 'not run: bench_baseline was built without ISA-L'
            return
        self.rows['3i'].values.append(t)
        self.rows['3i'].base.append(self.rows['3'].base[-1])

    def wait_idle(self, daemon, timeout=180.0):
        """Waits until the daemon's background first pass is done: its first_pass_spans
        counter (user.npzfs.stats) has not moved for 2 s (the indexer runs at SCHED_IDLE,
        so on a busy machine it may take a while). Notes a timeout."""
        def spans():
            try:
                return json.loads(os.getxattr(daemon.mnt, 'user.npzfs.stats'))[
                    'first_pass_spans']
            except (OSError, KeyError, ValueError):
                return None
        deadline = time.monotonic() + timeout
        last, since = spans(), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.25)
            now = spans()
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= 2.0:
                return
        self.env.note('the background first pass was still running after %d s' % timeout)

    def scenario_3b(self):
        """3b: sequential cat with the saved index on a fresh daemon."""
        e = self.env
        archive = e.p('deflated.npz')
        off, csize, _, _ = member_info(archive, 'adc.npy')
        self.ensure_index()
        warm(archive)
        mnt = e.w('mnt')
        for _ in range(e.runs):
            self.rows['3b'].base.append(
                e.baseline_json('inflate', archive, off, csize)[0]['seconds'])
            d = Daemon(e, archive, mnt, self.mount_opts(), tag='3b').start()
            try:
                self.rows['3b'].values.append(timed(['cat', os.path.join(mnt, 'adc.npy')]))
                self.record_hwm('3b', d)
            finally:
                d.stop()

    def load_frames(self, path, idx):
        """/usr/bin/python3 times np.load(mmap_mode='r') plus copying frames idx of `path`;
        returns (seconds, checksum)."""
        code = ('import numpy as np, sys, time, json\n'
                'idx = json.loads(sys.argv[2])\n'
                't0 = time.perf_counter()\n'
                'a = np.load(sys.argv[1], mmap_mode="r")\n'
                's = 0\n'
                'for k in idx:\n'
                '    s += int(np.array(a[k]).sum())\n'
                'print(json.dumps([time.perf_counter() - t0, s]))\n')
        out = subprocess.run([PYTHON, '-c', code, path, json.dumps(idx)], check=True,
                             capture_output=True, text=True).stdout
        return json.loads(out)

    def load_frames_through(self, d, idx, expected):
        """load_frames of adc.npy through daemon d's mount; fails unless the frames' checksum
        is `expected` (that of the plain file); returns the seconds."""
        t, s = self.load_frames(os.path.join(d.mnt, 'adc.npy'), idx)
        if s != expected:
            raise RuntimeError('frames read through the mount differ')
        return t

    def scenario_6_fresh(self):
        """6b (new): np.load mmap, 200 random frames, deflated, fresh daemon, no index;
        baseline: the in-process zlib inflate of the whole member."""
        e = self.env
        archive = e.p('deflated.npz')
        off, csize, _, _ = member_info(archive, 'adc.npy')
        _, nframes, _ = npy_layout(e.p('adc.npy'))
        _, s_base = self.load_frames(e.p('adc.npy'), random_frames(RANDOM_READS, nframes, 650))
        warm(archive)
        mnt = e.w('mnt')
        for i in range(e.runs):
            idx = random_frames(RANDOM_READS, nframes, 650 + i)
            self.rows['6n'].base.append(
                e.baseline_json('inflate', archive, off, csize)[0]['seconds'])
            _, s_ref = self.load_frames(e.p('adc.npy'), idx)
            d = Daemon(e, archive, mnt, self.mount_opts('index=off'), tag='6n').start()
            try:
                self.rows['6n'].values.append(self.load_frames_through(d, idx, s_ref))
                self.record_hwm('6b', d)
            finally:
                d.stop()

    def daemon_has_verify_option(self):
        r = subprocess.run([self.env.npzfs, '--help'], capture_output=True, text=True)
        return 'verify=' in r.stdout

    def scenario_stored_verify(self):
        """Stored rows 1, 2 and 6 with the default verification against verify=off, each
        pair interleaved on fresh daemons."""
        e = self.env
        if not self.daemon_has_verify_option():
            raise NotRun('npzfs has no -o verify= option yet')
        archive, plain = e.p('stored.npz'), e.p('adc.npy')
        _, nframes, _ = npy_layout(plain)
        warm(archive)
        mnt = e.w('mnt')
        for i in range(e.runs):
            idx = random_frames(RANDOM_READS, nframes, 700 + i)
            for opts, which in ((('verify=off',), 'base'), ((), 'values')):
                d = Daemon(e, archive, mnt, self.mount_opts(*opts), tag='1o').start()
                try:
                    member = os.path.join(mnt, 'adc.npy')
                    getattr(self.rows['1o'], which).append(timed(['cat', member]))
                    getattr(self.rows['2o'], which).append(timed(['cat', member]))
                finally:
                    d.stop()
                d = Daemon(e, archive, mnt, self.mount_opts(*opts), tag='6o').start()
                try:
                    t, _ = self.load_frames(os.path.join(mnt, 'adc.npy'), idx)
                    getattr(self.rows['6o'], which).append(t)
                finally:
                    d.stop()

    def one_block_archive(self):
        """An archive whose one member is a single fixed-Huffman deflate block of zeros
        (--size GiB; about 1/160 of it compressed), made once in the data directory."""
        e = self.env
        size = int(e.size * (1 << 30))
        path = e.p('oneblock-%d.zip' % size)
        if os.path.exists(path):
            return path, size
        code = ONE_BLOCK_WRITER + '\nwrite_one_block_zip(%r, %d)\n' % (path + '.tmp', size)
        subprocess.run([PYTHON, '-c', code], check=True)
        os.rename(path + '.tmp', path)
        return path, size

    def scenario_12(self):
        """12: the single-block member: cat throughput against zlib, and peak RSS."""
        e = self.env
        archive, size = self.one_block_archive()
        off, csize, usize, _ = member_info(archive, 'zeros.bin')
        warm(archive)
        mnt = e.w('mnt')
        for _ in range(e.runs):
            self.rows['12a'].base.append(
                e.baseline_json('inflate', archive, off, csize)[0]['seconds'])
            d = Daemon(e, archive, mnt, self.mount_opts('index=off'), tag='12').start()
            try:
                self.rows['12a'].values.append(timed(['cat', os.path.join(mnt, 'zeros.bin')]))
                self.rows['12b'].values.append(d.peak_rss_mib())
            finally:
                d.stop()

    def ensure_index(self):
        """Builds the saved index of deflated.npz with `npz index` (or, if the tool is not
        built, by a full read through a mount with the index enabled). Returns its size."""
        e = self.env
        archive = e.p('deflated.npz')
        side = e.sidecar(archive)
        if os.path.exists(side):
            os.unlink(side)
        if os.path.exists(e.npz):
            t = timed([e.npz, 'index', archive])
            e.note('npz index deflated.npz: %.2f s' % t)
        else:
            e.note('npz not built: index saved by a daemon after a full read')
            d = Daemon(e, archive, e.w('mnt'), self.mount_opts(), tag='index').start()
            try:
                timed(['cat', os.path.join(e.w('mnt'), 'adc.npy')])
            finally:
                d.stop()
        if not os.path.exists(side):
            raise NotRun('no saved index at %s after building it' % side)
        return os.path.getsize(side)

    def scenario_5_8(self):
        e = self.env
        archive = e.p('deflated.npz')
        _, csize, usize, _ = member_info(archive, 'adc.npy')
        size = self.ensure_index()
        self.index_mib = size / 2**20
        if self.wanted('8'):
            r = self.rows['8']
            r.values.append(size / 2**20)
            r.base.append(usize / 2**20)
            r.ratio_override = size / usize
            e.note('scenario 8: index %d bytes = %.3f%% of the member (%.3f%% of its '
                   '%d compressed bytes)' % (size, 100 * size / usize, 100 * size / csize,
                                             csize))
        if not self.wanted('5'):
            return
        inflate_s = e.baseline_json('inflate', archive, *member_info(archive, 'adc.npy')[:2])
        inflate_s = inflate_s[0]['seconds']
        warm(archive)
        mnt = e.w('mnt')
        for i in range(e.runs):
            d = Daemon(e, archive, mnt, self.mount_opts(), tag='5').start()
            try:
                self.first_frame('5', d, 500 + i, inflate_s)
                self.record_hwm('5', d)
            finally:
                d.stop()

    def first_frame(self, key, d, seed, inflate_s):
        """Times open + pread of one random frame of adc.npy through daemon d's mount (row
        `key`), checks its bytes, and fails the row if the daemon used more CPU than half a
        full inflate (`inflate_s`) to answer: "no full pass"."""
        e = self.env
        hdr, nframes, frame_bytes = npy_layout(e.p('adc.npy'))
        buf = bytearray(frame_bytes)
        k = random_frames(1, nframes, seed)[0]
        cpu0 = d.cpu_seconds()
        t0 = time.perf_counter()
        fd = os.open(os.path.join(d.mnt, 'adc.npy'), os.O_RDONLY)
        n = os.preadv(fd, [buf], hdr + k * frame_bytes)
        t = time.perf_counter() - t0
        os.close(fd)
        cpu = d.cpu_seconds() - cpu0
        if n != frame_bytes:
            raise RuntimeError('short frame read: %d' % n)
        with open(e.p('adc.npy'), 'rb') as f:
            f.seek(hdr + k * frame_bytes)
            if f.read(frame_bytes) != bytes(buf):
                raise RuntimeError('frame %d differs from adc.npy' % k)
        self.rows[key].values.append(t)
        if cpu > 0.5 * inflate_s:
            self.rows[key].extra_fail.append(
                'daemon used %.2f s CPU for one frame (a full inflate is %.2f s)' % (
                    cpu, inflate_s))

    def scenario_6(self):
        e = self.env
        plain = e.p('adc.npy')
        _, nframes, _ = npy_layout(plain)
        if not os.path.exists(e.sidecar(e.p('deflated.npz'))):
            self.ensure_index()
        warm(plain)
        mnt = e.w('mnt')
        for key, archive in (('6a', e.p('deflated.npz')), ('6b', e.p('stored.npz'))):
            warm(archive)
            for i in range(e.runs):
                idx = random_frames(RANDOM_READS, nframes, 600 + i)
                t, s_base = self.load_frames(plain, idx)
                self.rows[key].base.append(t)
                d = Daemon(e, archive, mnt, self.mount_opts(), tag=key).start()
                try:
                    self.rows[key].values.append(self.load_frames_through(d, idx, s_base))
                    self.record_hwm('6', d)
                finally:
                    d.stop()

    def scenario_7(self):
        r = self.rows['7']
        if not self.hwm:
            r.error = 'not run: no daemon ran in scenarios 1-6'
            return
        r.values = [h for _, h in self.hwm]
        worst = max(self.hwm, key=lambda x: x[1])
        limit = 64 + self.cache_budget_mib + self.index_mib
        r.target = '≤ %.0f MiB (64 + cache %d + index %.1f); no temp files' % (
            limit, self.cache_budget_mib, self.index_mib)
        r.ratio_override = None
        self.env.note('scenario 7: peak RSS %.1f MiB (in scenario %s), limit %.1f MiB' % (
            worst[1], worst[0], limit))
        for p in self.tempfile_problems:
            self.env.note('scenario 7: ' + p)
        if not self.tempfile_problems:
            self.env.note('scenario 7: no temp file with decompressed data found (daemon '
                          'fds, new big files in /tmp, /var/tmp, /dev/shm, data and work '
                          'dirs)')

    def scenario_9_10(self):
        e = self.env
        full = e.p('feat.npy')
        quarter = self.quarter_of(full)
        warm(full)
        warm(quarter)
        modes = []
        if self.wanted('9') or self.wanted('10'):
            modes += ['stored', 'quick']
        if self.wanted('10'):
            modes += ['quarter', 'caught-up']
        self.cp_sync_compressed = []
        for i in range(e.runs):
            for mode in modes:  # interleaved: each run measures every mode and its baseline
                self.append_and_finalize(mode, quarter if mode == 'quarter' else full, i == 0)
        if self.cp_sync_compressed:
            e.note('scenario 10: cp + fsync of the compressed bytes (durable, as finalize is): '
                   'median %s' % fmt(statistics.median(self.cp_sync_compressed), 's'))

    # Rows of one append-and-finalize mode: (dd row or None, finalize row).
    MODE_ROWS = {'stored': ('9', '10a'), 'quarter': (None, '10q'), 'quick': ('9c', '10b'),
                 'caught-up': (None, '10c')}

    def append_and_finalize(self, mode, src, verify_all):
        e = self.env
        mnt, spool, out, cp_out = e.w('mnt'), e.w('spool'), e.w('append.npz'), e.w('cp.bin')
        for p in (out, cp_out):
            if os.path.exists(p):
                os.unlink(p)
        shutil.rmtree(spool, ignore_errors=True)
        os.makedirs(spool)
        dd_row, fin_row = self.MODE_ROWS[mode]
        if dd_row:
            plain = e.w('dd-baseline.bin')
            # Each dd starts with no dirty pages waiting, and the timed one writes into the
            # pages an untimed one freed, as the dd through the mount then does (see METHOD).
            self.rows[dd_row].base.append(timed_after_untimed_run(
                ['dd', 'if=' + src, 'of=' + plain, 'bs=1M', 'status=none'], plain, sync=True))
        opts = self.mount_opts('spool=' + spool, 'create')  # `out` is made on unmount
        if mode in ('quick', 'caught-up'):
            opts.append('compress=%d' % DEFLATE_LEVEL)
        d = Daemon(e, out, mnt, opts, tag='10-' + mode).start()
        try:
            os.sync()
            t = timed(['dd', 'if=' + src, 'of=' + os.path.join(mnt, 'feat.npy'), 'bs=1M',
                       'status=none'])
            if dd_row:
                self.rows[dd_row].values.append(t)
            if mode in ('stored', 'quarter'):
                self.rows[fin_row].base.append(self.cp_and_fsync(spool, cp_out))
            elif mode == 'caught-up':
                shadow = self.wait_for_background_deflate(spool, src)
                self.rows[fin_row].base.append(
                    timed_after_untimed_run(['cp', shadow, cp_out], cp_out))
                self.cp_sync_compressed.append(self.cp_and_fsync(shadow, cp_out))
        except BaseException:
            d.kill()
            raise
        self.rows[fin_row].values.append(d.stop())
        if mode == 'quick':
            # After the finalize, not between the two dd, which must run back to back: a
            # dd that follows 20 s of other work ran 3x slower here (1.0 s against 0.3 s
            # for the plain dd: the host had taken back the free pages it wrote into).
            self.rows['10b'].base.append(
                e.baseline_json('deflate', src, DEFLATE_LEVEL)[0]['seconds'])
        self.verify_appended(out, src, os.path.getsize(src), full=verify_all)
        if os.path.isdir(spool) and any(os.scandir(spool)):
            e.note('scenario 10 (%s): spool dir not empty after finalize: %s' % (
                mode, [x.name for x in os.scandir(spool)][:5]))
        os.unlink(out)

    def cp_and_fsync(self, spool, cp_out):
        """cp of the spool file (or of `spool` itself if it is a file), then fsync of the
        copy: durable, as finalize is."""
        spool_file = spool if os.path.isfile(spool) else self.largest_file(spool)
        if spool_file is None:
            raise RuntimeError('no spool file found in %s' % spool)
        t0 = time.perf_counter()
        run(['cp', spool_file, cp_out])
        fd = os.open(cp_out, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        t = time.perf_counter() - t0
        os.unlink(cp_out)
        return t

    def wait_for_background_deflate(self, spool, src):
        """Waits until the background deflater has recorded every complete chunk of
        the member (the rate at which it keeps up); returns its shadow's data file."""
        hdr, count, frame = npy_layout(src)
        want = count * frame // DEFLATE_CHUNK
        index = os.path.join(spool, '.feat.npy.npzfs-deflate-index')
        deadline = time.monotonic() + 1800
        while True:
            size = os.path.getsize(index) if os.path.exists(index) else 0
            if size >= SHADOW_HEADER + SHADOW_RECORD * want:
                return os.path.join(spool, '.feat.npy.npzfs-deflate')
            if time.monotonic() > deadline:
                raise RuntimeError('the background deflater did not catch up (%d bytes of '
                                   'index)' % size)
            time.sleep(0.05)

    def quarter_of(self, src):
        """A .npy holding the first quarter of src's frames (made once, in the work dir)."""
        out = self.env.w('feat-quarter.npy')
        hdr, count, frame = npy_layout(src)
        n = max(1, count // 4)
        if os.path.exists(out) and os.path.getsize(out) > n * frame:
            return out
        import numpy as np
        with open(src, 'rb') as f:
            version = np.lib.format.read_magic(f)
            shape, fortran, dtype = np.lib.format._read_array_header(f, version)
        with open(src, 'rb') as fin, open(out + '.tmp', 'wb') as fout:
            np.lib.format.write_array_header_1_0(fout, {
                'descr': np.lib.format.dtype_to_descr(dtype), 'fortran_order': fortran,
                'shape': (n,) + tuple(shape[1:])})
            fin.seek(hdr)
            left = n * frame
            while left:
                block = fin.read(min(left, 8 << 20))
                fout.write(block)
                left -= len(block)
        os.replace(out + '.tmp', out)
        return out

    def scenario_14(self):
        e = self.env
        src = e.p('adc.npy')
        warm(src)
        out = e.w('pack.npz')
        for _ in range(e.runs):
            self.rows['14a'].base.append(
                e.baseline_json('deflate', src, DEFLATE_LEVEL)[0]['seconds'])
            if os.path.exists(out):
                os.unlink(out)
            self.rows['14a'].values.append(
                timed([e.npz, 'pack', out, src, '--compress=%d' % DEFLATE_LEVEL]))
        run([e.npz, 'verify', out], stdout=subprocess.DEVNULL)
        ours = member_info(out, 'adc.npy')[1]
        theirs = member_info(e.p('deflated.npz'), 'adc.npy')[1]
        self.rows['14b'].values.append(ours / 2**20)
        self.rows['14b'].ratio_override = ours / theirs
        e.note('scenario 14: adc.npy deflated to %d bytes by npz pack --compress, %d by '
               'np.savez_compressed' % (ours, theirs))
        os.unlink(out)

    def seekable_archive(self):
        """adc.npy packed by `npz pack --compress` (independent chunks and a seek table in
        the central directory), made in the work dir again whenever adc.npy or npz is newer
        (a new npz may cut other chunks)."""
        e = self.env
        out = e.w('seekable.npz')
        newest_input = max(os.path.getmtime(e.p('adc.npy')), os.path.getmtime(e.npz))
        if not (os.path.exists(out) and os.path.getmtime(out) > newest_input):
            run([e.npz, 'pack', out + '.tmp', e.p('adc.npy'), '--compress=%d' % DEFLATE_LEVEL],
                stdout=subprocess.DEVNULL)
            os.replace(out + '.tmp', out)
            os.sync()  # not written back while the scenario reads it
        return out

    def scenario_10_seekable(self):
        """A member npzfs deflated itself, on a fresh daemon with no sidecar (index=off):
        first random frame, sequential cat, np.load mmap of 200 frames."""
        e = self.env
        archive = self.seekable_archive()
        off, csize, _, _ = member_info(archive, 'adc.npy')
        plain = e.p('adc.npy')
        _, nframes, _ = npy_layout(plain)
        warm(archive)
        warm(plain)
        mnt = e.w('mnt')
        for i in range(e.runs):
            inflate_s = e.baseline_json('inflate', archive, off, csize)[0]['seconds']
            self.rows['10s'].base.append(inflate_s)
            d = Daemon(e, archive, mnt, self.mount_opts('index=off'), tag='10s').start()
            try:
                self.first_frame('10f', d, 700 + i, inflate_s)
            finally:
                d.stop()
            d = Daemon(e, archive, mnt, self.mount_opts('index=off'), tag='10s').start()
            try:
                self.rows['10s'].values.append(timed(['cat', os.path.join(mnt, 'adc.npy')]))
            finally:
                d.stop()
            idx = random_frames(RANDOM_READS, nframes, 720 + i)
            t, s_base = self.load_frames(plain, idx)
            self.rows['10m'].base.append(t)
            d = Daemon(e, archive, mnt, self.mount_opts('index=off'), tag='10s').start()
            try:
                self.rows['10m'].values.append(self.load_frames_through(d, idx, s_base))
            finally:
                d.stop()

    def scenario_13(self):
        e = self.env
        work = e.w('sparse')
        os.makedirs(work, exist_ok=True)
        one = self.one_mib_npy()
        empty = os.path.join(work, 'empty.npz')
        big = {gib: os.path.join(work, 'big-%d.npz' % gib) for gib in (1, 8)}
        synced = []
        for _ in range(e.runs):
            zipfile.ZipFile(empty, 'w').close()
            t_empty, _ = self.finalize_one(empty, one)
            idle = Daemon(e, empty, e.w('mnt'), self.mount_opts(), tag='13').start()
            os.sync()
            self.rows['13g'].values.append(idle.stop())
            for gib, key, vs_zipfile in ((1, '13a', '13b'), (8, '13c', '13d')):
                old_tail = make_sparse_archive(big[gib], gib)
                t, extra = self.finalize_one(big[gib], one)
                self.rows[key].values.append(t)
                self.rows[key].base.append(t_empty)
                self.rows[vs_zipfile].values.append(t)
                self.record_extra_disk(extra, os.path.getsize(one), old_tail, gib)
                make_sparse_archive(big[gib], gib)
                self.rows[vs_zipfile].base.append(zipfile_append(big[gib], one))
            make_sparse_archive(big[8], 8)
            os.sync()
            self.rows['13f'].values.append(timed([e.npz, 'add', big[8], 'one', one]))
            make_sparse_archive(big[8], 8)
            self.rows['13f'].base.append(zipfile_append(big[8], one))
            self.rows['13g'].base.append(self.rows['13f'].base[-1])
            make_sparse_archive(big[8], 8)
            synced.append(zipfile_append(big[8], one, fsync=True))
            make_sparse_archive(big[8], 8)
            self.rows['13h'].values.append(zipfile_append(big[8], one, journal=True))
            make_sparse_archive(big[8], 8)
            self.rows['13h'].base.append(zipfile_append(big[8], one))
        e.note('scenario 13: zipfile append followed by an fsync of the archive (durable, as '
               'npzfs appends are; zipfile itself never fsyncs): median %s' %
               fmt(statistics.median(synced), 's'))
        shutil.rmtree(work, ignore_errors=True)

    def record_extra_disk(self, extra, new_bytes, old_tail, gib):
        row = self.rows['13e']
        row.values.append(extra / 2**20)
        limit = new_bytes + old_tail + (1 << 20)
        if extra > limit:
            row.extra_fail.append('%d GiB archive: %d bytes of extra disk, limit %d (new bytes '
                                  '+ old central directory + 1 MiB)' % (gib, extra, limit))

    def one_mib_npy(self):
        """A .npy of 1 MiB of float32 frames (made once, in the work dir)."""
        out = self.env.w('one-mib.npy')
        if not os.path.exists(out):
            import numpy as np
            np.save(out, np.linspace(0, 1, 1 << 18, dtype=np.float32).reshape(256, 1024))
        return out

    def finalize_one(self, archive, src):
        """Mounts `archive`, copies `src` in as one.npy, unmounts. Returns the seconds from
        the unmount to the daemon's exit and the peak extra disk (bytes) meanwhile."""
        e = self.env
        d = Daemon(e, archive, e.w('mnt'), self.mount_opts(), tag='13').start()
        try:
            # No dirty pages left by the steps before (making the sparse archive, a zipfile
            # append): the finalize's fsync would write them (ext4 commits them together).
            os.sync()
            shutil.copyfile(src, os.path.join(d.mnt, 'one.npy'))
        except BaseException:
            d.kill()
            raise
        sampler = DiskSampler(os.path.dirname(archive))
        sampler.start()
        try:
            t = d.stop()
        finally:
            sampler.finish()
        with zipfile.ZipFile(archive) as zf:
            if zf.read('one.npy') != open(src, 'rb').read():
                raise RuntimeError('%s: one.npy differs from %s' % (archive, src))
        return t, sampler.peak - sampler.first

    @staticmethod
    def largest_file(root):
        best = None
        for dirpath, _, files in os.walk(root):
            for fn in files:
                p = os.path.join(dirpath, fn)
                s = os.path.getsize(p)
                if best is None or s > best[1]:
                    best = (p, s)
        return best[0] if best else None

    def verify_appended(self, archive, src, src_size, full):
        with zipfile.ZipFile(archive) as zf:
            info = zf.getinfo('feat.npy')
            if info.file_size != src_size:
                raise RuntimeError('finalized feat.npy has %d bytes, expected %d' % (
                    info.file_size, src_size))
            if full:
                # Data must equal the source after the header (header may be re-canonicalized).
                hdr, _, _ = npy_layout(src)
                with zf.open(info) as fin, open(src, 'rb') as fsrc:
                    fin.read(hdr)
                    fsrc.seek(hdr)
                    while True:
                        a = fin.read(8 << 20)  # also checks the CRC-32 at the end
                        b = fsrc.read(8 << 20)
                        if a != b:
                            raise RuntimeError('finalized feat.npy differs from feat.npy')
                        if not a:
                            break

    def scenario_11(self):
        e = self.env
        archive = e.p('many.npz')
        warm(archive)
        mnt = e.w('mnt')
        for _ in range(e.runs):
            # Mount time: from starting the daemon until the mount point is live. Then the
            # first (cold) `ls -l` on that fresh mount.
            d = Daemon(e, archive, mnt, self.mount_opts(), tag='11').start()
            try:
                self.rows['11a'].values.append(d.mount_seconds)
                t0 = time.perf_counter()
                r = subprocess.run(['ls', '-l', mnt], stdout=subprocess.PIPE, check=True)
                self.rows['11b'].values.append(time.perf_counter() - t0)
                n = len(r.stdout.splitlines()) - 1  # minus the "total" line
                if n != 10000:
                    raise RuntimeError('ls -l listed %d entries, expected 10000' % n)
            finally:
                d.stop()

    # -- driver ------------------------------------------------------------------------

    def run_all(self):
        steps = [
            (['1', '2'], self.scenario_1_2),
            (['3', '4a', '4b', '3i'], self.scenario_3_4),
            (['3b'], self.scenario_3b),
            (['6n'], self.scenario_6_fresh),
            (['1o', '2o', '6o'], self.scenario_stored_verify),
            (['12a', '12b'], self.scenario_12),
            (['5', '8'], self.scenario_5_8),
            (['6a', '6b'], self.scenario_6),
            (['9', '9c', '10a', '10q', '10b', '10c'], self.scenario_9_10),
            (['14a', '14b'], self.scenario_14),
            (['10f', '10s', '10m'], self.scenario_10_seekable),
            (['13a', '13b', '13c', '13d', '13e', '13f', '13g', '13h'], self.scenario_13),
            (['11a', '11b'], self.scenario_11),
            (['7'], self.scenario_7),
        ]
        for keys, fn in steps:
            nums = {self.rows[k].num for k in keys}
            if not any(self.wanted(n) for n in nums) and keys != ['7']:
                continue
            if keys == ['7'] and not self.wanted('7'):
                continue
            log('scenario %s ...' % '/'.join(sorted(nums)))
            t0 = time.monotonic()
            try:
                fn()
            except NotRun as ex:
                for k in keys:
                    self.rows[k].error = 'not run: %s' % ex
                self.env.note('scenario %s not run: %s' % ('/'.join(keys), ex))
            except Exception as ex:  # noqa: BLE001 - one failure must not hide the others
                for k in keys:
                    self.rows[k].error = 'error: %s' % ex
                self.env.note('scenario %s error: %s: %s' % ('/'.join(keys),
                                                              type(ex).__name__, ex))
                cleanup()
            log('... took %.1f s' % (time.monotonic() - t0))

    def report(self, md_path, header):
        rows = [r for k, r in self.rows.items() if self.wanted(r.num)]
        text = table_lines(rows, markdown=False)
        print('\n'.join(text))
        notes = []
        for r in rows:
            notes += ['%s: %s' % (r.num, why) for why in r.extra_fail]
        notes += self.env.notes
        print('\nNotes:')
        for n in notes:
            print('- ' + n)
        md = [header, ''] + table_lines(rows, markdown=True) + ['']
        md += ['Notes:', ''] + ['- ' + n for n in notes] + ['']
        md += ['How each row is measured:', ''] + ['- ' + m for m in METHOD] + ['']
        with open(md_path, 'w') as f:
            f.write('\n'.join(md))
        log('wrote %s' % md_path)


def machine_line(env):
    cpu = 'unknown CPU'
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    cpu = line.split(':', 1)[1].strip()
                    break
    except OSError:
        pass
    mem = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30
    return ('Measured %s on %s, %d cores, %.0f GiB RAM, kernel %s; data %.2f GiB per member, '
            '%d runs per scenario, cache=%d MiB; load average %s at the start.' % (
                time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()), cpu, os.cpu_count(), mem,
                os.uname().release, env.size, env.runs, env.cache_mib, env.load_at_start))


def main():
    ap = argparse.ArgumentParser(description='npzfs benchmark')
    ap.add_argument('--build', required=True, help='release build directory')
    ap.add_argument('--size', type=float, default=1.0, help='GiB per member (default 1)')
    ap.add_argument('--runs', type=int, default=5)
    ap.add_argument('--cache', type=int, default=128, help='cache=MiB for every mount')
    ap.add_argument('--data', help='data directory (default BUILD/bench-data)')
    ap.add_argument('--only', help='comma-separated scenario numbers, e.g. 1,3,11')
    ap.add_argument('--profile', choices=['perf', 'strace'],
                    help='profile the first daemon of each scenario into BUILD/bench-profile '
                         '(slows those runs: not for the published table)')
    args = ap.parse_args()
    if args.runs < 1:
        ap.error('--runs must be at least 1')
    env = Env(args)
    only = set(args.only.split(',')) if args.only else None
    os.makedirs(env.work, exist_ok=True)
    if env.profile:
        os.makedirs(env.profile_dir, exist_ok=True)
    if not os.path.exists(env.baseline):
        log('bench_baseline not built: %s' % env.baseline)
        return 1
    log('generating data in %s (%.2f GiB per member)' % (env.data, env.size))
    subprocess.run([PYTHON, os.path.join(HERE, 'gen_data.py'), env.data,
                    '--size', str(env.size)], check=True)
    bench = Bench(env, only)
    env.load_at_start = '%.1f' % os.getloadavg()[0]
    t0 = time.monotonic()
    bench.run_all()
    header = '%s Total benchmark time %.0f s; load average %.1f at the end.' % (
        machine_line(env), time.monotonic() - t0, os.getloadavg()[0])
    print('\n' + header + '\n')
    # A run of some scenarios (--only) must never be mistaken for the full table.
    name = 'bench-results.md' if only is None else 'bench-results-partial.md'
    bench.report(os.path.join(env.build, name), header)
    return 0


if __name__ == '__main__':
    sys.exit(main())
