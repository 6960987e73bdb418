#!/usr/bin/python3
"""Writes the seed corpora of the fuzzers in tests/fuzz/corpus/<name>/ (small files, committed).

    /usr/bin/python3 tests/fuzz/make_seeds.py [CORPUS_DIR]

Needs numpy (Debian's python3-numpy, through /usr/bin/python3). Deterministic: running it
again rewrites the same files. It deletes nothing: the regress_* files that are not written
here are inputs the fuzzers found (kept so that every build replays them). Each seed is a few hundred bytes to a few KiB; the fuzzers
find the rest. The byte layouts of the structured inputs (sidecar, deflate_read,
growing_member) follow the FuzzInput calls of the harnesses: one byte per value whose range
fits a byte, big-endian bytes for wider ranges (FuzzInput::Range), little-endian U16/U32.
"""
import io
import os
import struct
import sys
import time
import warnings
import zipfile
import zlib

import numpy as np

# zipfile stamps members with the current local time: fix it, so that the seeds do not
# change from one run to the next.
os.environ["TZ"] = "UTC"
time.tzset()
time.time = lambda: 1700000000.0

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def write(corpus, name, data):
    d = os.path.join(OUT, corpus)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def rng(v, span):
    """The bytes FuzzInput::Range(lo, lo + span) consumes to yield lo + v."""
    n = 0
    s = span
    while s:
        n += 1
        s >>= 8
    return v.to_bytes(n, "big") if n else b""


def npy_bytes(arr, **kw):
    b = io.BytesIO()
    np.save(b, arr, **kw)
    return b.getvalue()


# ---------------------------------------------------------------- npy_header
def npy_header_seeds():
    arrays = {
        "i2_2d": np.zeros((3, 4), "<i2"),
        "u1_1d": np.zeros(5, "|u1"),
        "f8_fortran": np.asfortranarray(np.zeros((2, 3), ">f8")),
        "scalar": np.array(3.5),
        "empty": np.zeros((0, 7), "<i4"),
        "bool": np.zeros((2,), "?"),
        "c16": np.zeros((1, 1, 1), "<c16"),
        "unicode": np.zeros((2,), "<U5"),
        "datetime": np.zeros((2,), "<M8[ms]"),
        "structured": np.zeros((2,), [("a", "<i4"), ("b", "<f8", (2,))]),
        "nested": np.zeros((1,), [("x", [("y", "u1"), ("z", "<i2")]), ("w", "S3")]),
        "object": np.array([None, 1], dtype=object),
        "utf8_field": np.zeros((1,), [("\u00e9t\u00e9", "<i4")]),  # latin1 fits: v1.0
        "utf8_v3": np.zeros((1,), [("\u6570", "<i4")]),  # needs UTF-8: v3.0
    }
    for name, a in arrays.items():
        data = npy_bytes(a, allow_pickle=True)
        hlen = data.index(b"\n") + 1
        write("npy_header", name, data[:hlen + 8])
    # Version 2.0 (a 4-byte length field; numpy writes it for headers over 65535 bytes, a
    # small one is just as valid).
    text = b"{'descr': '<u2', 'fortran_order': False, 'shape': (2, 3), }"
    text += b" " * (64 - (12 + len(text) + 1) % 64) + b"\n"
    write("npy_header", "v2", b"\x93NUMPY\x02\x00" + struct.pack("<I", len(text)) + text)
    base = npy_bytes(np.zeros((3, 4), "<i2"))
    hlen = base.index(b"\n") + 1
    write("npy_header", "bad_magic", b"\x93NUMPZ" + base[6:hlen])
    write("npy_header", "truncated", base[:40])
    write("npy_header", "v9", base[:6] + b"\x09\x00" + base[8:hlen])
    text = b"{'descr': '<i2', 'fortran_order': False, 'shape': (3, 4), 'extra': 1, }"
    write("npy_header", "extra_key", b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text) + 1) + text + b"\n")
    text = b"{'shape':(3,4),'descr':'<i2','fortran_order':True}"
    write("npy_header", "odd_spacing", b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text) + 1) + text + b"\n")


# ---------------------------------------------------------------- zip_directory
def zip_seeds():
    b = io.BytesIO()
    np.savez(b, a=np.arange(6, dtype="<i2").reshape(2, 3), b=np.zeros(3, "<f4"))
    write("zip_directory", "savez", b.getvalue())
    b = io.BytesIO()
    np.savez_compressed(b, a=np.arange(100, dtype="<i4"))
    write("zip_directory", "savez_compressed", b.getvalue())
    # numpy >= 1.? writes members with force_zip64: ZIP64 extras in the local headers.
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w") as z:
        with z.open("z64.npy", "w", force_zip64=True) as f:
            f.write(npy_bytes(np.arange(4, dtype="<i2")))
        z.writestr("d/", b"")
        z.writestr("d/e.npy", npy_bytes(np.zeros(2, "u1")), compress_type=zipfile.ZIP_DEFLATED)
        z.comment = b"a comment"
    write("zip_directory", "zip64_dir_comment", b.getvalue())

    class Unseekable(io.RawIOBase):  # makes zipfile write data descriptors (flag bit 3)
        def __init__(self):
            self.buf = bytearray()

        def writable(self):
            return True

        def write(self, data):
            self.buf += data
            return len(data)

    u = Unseekable()
    with zipfile.ZipFile(u, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("desc.npy", npy_bytes(np.ones(10, "<i2")))
    write("zip_directory", "data_descriptor", bytes(u.buf))
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w") as z:
        z.writestr("/abs.npy", b"x")
        z.writestr("../up.npy", b"y")
        z.writestr("./a//b.npy", b"z")
        z.writestr("dup.npy", b"1")
        z.writestr("dup.npy", b"2")
        z.writestr("a", b"file and dir")
        z.writestr("a/b.npy", b"under")
        info = zipfile.ZipInfo("ut.npy", (2024, 5, 6, 7, 8, 10))
        info.extra = struct.pack("<HHBI", 0x5455, 5, 1, 1700000000)
        z.writestr(info, b"ut")
        z.writestr("bz.npy", b"other method", compress_type=zipfile.ZIP_BZIP2)
    write("zip_directory", "names_methods", b.getvalue())
    write("zip_directory", "empty", b"PK\x05\x06" + b"\x00" * 18)
    write("zip_directory", "seek_table", seek_table_zip())
    write("zip_directory", "seek_table_adopted", seek_table_zip(adopted=True))


def seek_table_zip(adopted=False):
    """One member deflated in independent chunks with npzfs's seek table in its central
    entry (core/README.md, "Seek table extra field"): a 128-byte first chunk (a .npy header),
    then 1000-byte chunks. `adopted`: as a finalize that made the archive of a deflated
    shadow writes it, the first chunk a stored block and the local header padded to 256
    bytes with npzfs's padding extra field (core/README.md, "Deflated shadow")."""
    data = npy_bytes(np.arange(1500, dtype="<i2"))
    first, size = 128, 1000
    chunks = [data[:first]] + [data[i:i + size] for i in range(first, len(data), size)]
    raw, table = b"", b""
    for i, c in enumerate(chunks):
        z = zlib.compressobj(6, zlib.DEFLATED, -15)
        out = z.compress(c) + (z.flush() if i == len(chunks) - 1 else z.flush(zlib.Z_FULL_FLUSH))
        if adopted and i == 0:
            out = b"\x00" + struct.pack("<HH", len(c), 0xFFFF ^ len(c)) + c
        raw += out
        table += struct.pack("<II", len(out), zlib.crc32(c))
    body = b"NPZS" + struct.pack("<BBHIII", 1, 0, 0, size, first, len(chunks)) + table
    body += struct.pack("<I", zlib.crc32(body))
    extra = struct.pack("<HH", 0x5A4E, len(body)) + body
    name = b"chunked.npy"
    padding = b""
    if adopted:
        gap = 256 - 30 - len(name)
        padding = struct.pack("<HH", 0x504E, gap - 4) + b"\x00" * (gap - 4)
    fields = struct.pack("<HHHHHIIIHH", 20, 0, 8, 0, 0x21, zlib.crc32(data), len(raw), len(data),
                         len(name), len(padding))
    local = b"PK\x03\x04" + fields + name + padding + raw
    fields = struct.pack("<HHHHHIIIHH", 20, 0, 8, 0, 0x21, zlib.crc32(data), len(raw), len(data),
                         len(name), len(extra))
    central = (b"PK\x01\x02" + struct.pack("<H", 0x314) + fields
               + struct.pack("<HHHII", 0, 0, 0, 0o100644 << 16, 0) + name + extra)
    end = b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 1, 1, len(central), len(local), 0)
    return local + central + end


# ---------------------------------------------------------------- sidecar
# Offsets in the sidecar (format 2) header and first record (core/README.md, "Index file
# format"): the first record is member 0's, deflated; a checkpoint without window is 37 bytes.
RECORD_COUNT, FIRST_RECORD = 48, 56
KIND, STATE, CHECKPOINT_COUNT, FIRST_CHECKPOINT, CHECKPOINT = 100, 101, 104, 112, 37
SECOND = FIRST_CHECKPOINT + CHECKPOINT  # out 0, in 8, bits 16, header_bit 17, span_crc 25,
                                        # window_size 29, window_bytes 33, window 37


def patches(mode, edits, truncate=None):
    """Mode 0 (patches of the true sidecar): count, then (offset, length, bytes) each."""
    out = bytes([mode]) + rng(len(edits), 16)
    for at, data in edits:
        out += at.to_bytes(2, "big") + bytes([len(data) - 1]) + data
    if truncate is not None:
        out += truncate.to_bytes(2, "big")
    return out


def sidecar_seeds():
    fix = 2
    write("sidecar", "true", bytes([0]))
    write("sidecar", "true_save_again", bytes([16]))
    write("sidecar", "no_records", patches(fix, [(RECORD_COUNT, b"\x00")]))
    write("sidecar", "incomplete", patches(fix, [(STATE, b"\x00")]))
    write("sidecar", "stored_kind", patches(fix, [(KIND, b"\x02")]))
    write("sidecar", "one_checkpoint", patches(fix, [(CHECKPOINT_COUNT, b"\x01")]))
    write("sidecar", "checkpoint_in", patches(fix | 16, [(SECOND + 8, b"\x13")]))
    write("sidecar", "checkpoint_bits", patches(fix, [(SECOND + 16, b"\x05")]))
    write("sidecar", "header_bit", patches(fix, [(SECOND + 17, b"\x00\x01")]))
    write("sidecar", "second_out", patches(fix, [(SECOND, b"\x00\x10")]))
    write("sidecar", "window_byte", patches(fix, [(SECOND + 37 + 10, b"\xff\x00")]))
    write("sidecar", "span_crc", patches(fix, [(FIRST_CHECKPOINT + 25, b"\xde\xad")]))
    write("sidecar", "span_crc_save_again", patches(fix | 16, [(SECOND + 25, b"\x01")]))
    write("sidecar", "bad_crc", patches(0, [(200, b"\x01")]))
    write("sidecar", "truncated", patches(fix | 8, [], truncate=300))
    write("sidecar", "whole_garbage", bytes([1 | 2 | 4]) + b"NPZFSIDX" + b"\x02" + b"\x00" * 70)


# ---------------------------------------------------------------- deflate_read
def raw_deflate(data, level=6, strategy=zlib.Z_DEFAULT_STRATEGY, flush_every=0):
    c = zlib.compressobj(level, zlib.DEFLATED, -15, 8, strategy)
    out = b""
    if flush_every:
        for i in range(0, len(data), flush_every):
            out += c.compress(data[i:i + flush_every]) + c.flush(zlib.Z_FULL_FLUSH)
    else:
        out += c.compress(data)
    return out + c.flush()


def recipe(mode, cache, level, strategy, mem_level, flush_every, target, unit, ops,
           chunks=None):
    """chunks (mode bit 4): (first chunk size, chunk size, table damage) of a chunked member."""
    out = bytes([mode]) + rng(cache, 256 << 10) + struct.pack("<I", 0x5EED)
    out += bytes([level, strategy, mem_level - 1])
    out += bytes([1]) + rng(flush_every - 1, (96 << 10) - 1) if flush_every else bytes([0])
    if chunks:
        first, size, damage = chunks
        out += rng(first, 4096) + rng(size - 256, (160 << 10) - 256) + struct.pack("<H", damage)
    out += rng(target, 384 << 10) + bytes([len(unit) - 1]) + unit + struct.pack("<I", 12345)
    return out + ops


def deflate_seeds():
    unit = b"\x00\x01\x02\x03frame"
    rep = bytes([0, 200])                      # the unit, 201 times
    noise = bytes([1]) + (8000).to_bytes(2, "big")
    far = bytes([2]) + (30000).to_bytes(2, "big") + (2000).to_bytes(2, "big")
    run = bytes([3]) + (40000).to_bytes(3, "big")[1:] + b"\x07"
    ops = (rep + noise + far + run) * 6
    write("deflate_read", "level6", recipe(0, 0, 6, 0, 8, 0, 300 << 10, unit, ops))
    write("deflate_read", "level1_flush_index", recipe(2, 70000, 1, 0, 8, 20000, 200 << 10, unit, ops))
    write("deflate_read", "fixed_save", recipe(4, 1, 9, 4, 9, 0, 250 << 10, unit, ops))
    write("deflate_read", "stored_badcrc", recipe(8, 65536, 0, 0, 1, 0, 150 << 10, unit, ops))
    write("deflate_read", "rle_huffman", recipe(6, 4096, 5, 3, 4, 5000, 380 << 10, unit, ops))
    write("deflate_read", "empty", recipe(0, 0, 6, 0, 8, 0, 0, unit, b""))
    write("deflate_read", "chunked", recipe(16, 0, 6, 0, 8, 0, 300 << 10, unit, ops,
                                            chunks=(128, 64 << 10, 0)))
    write("deflate_read", "chunked_index_bad_table", recipe(16 | 32 | 2, 9000, 1, 0, 8, 0,
                                                            200 << 10, unit, ops,
                                                            chunks=(0, 20000, 77)))
    write("deflate_read", "chunked_empty", recipe(16 | 4, 0, 6, 0, 8, 0, 0, unit, b"",
                                                  chunks=(0, 1 << 10, 0)))
    prefix = bytes([1]) + rng(1000, 256 << 10) + struct.pack("<I", 7)
    text = b"npzfs fuzz seed " * 3000
    write("deflate_read", "raw_text", prefix + raw_deflate(text))
    write("deflate_read", "raw_fixed", bytes([1 | 2]) + rng(0, 256 << 10) + struct.pack("<I", 7)
          + raw_deflate(text[:5000], 9, zlib.Z_FIXED))
    write("deflate_read", "raw_stored", prefix + raw_deflate(bytes(range(256)) * 40, 0))
    write("deflate_read", "raw_zeros_bomb", prefix + raw_deflate(bytes(1 << 20), 9))
    write("deflate_read", "raw_truncated", prefix + raw_deflate(text)[:-20])
    write("deflate_read", "raw_empty", prefix + raw_deflate(b""))


# ---------------------------------------------------------------- block_finder
def finder_input(mode, from_bit, search=64 << 10, warmup=256 << 10, candidates=64, junk=5):
    """The harness's fixed fields: mode, start bit (U32), limits, junk bytes."""
    return (bytes([mode]) + struct.pack("<I", from_bit) + rng(search, 64 << 10)
            + rng(warmup, 256 << 10) + rng(candidates, 64) + rng(junk, 63))


def finder_recipe(level, strategy, mem_level, flush_every, target, ops):
    out = bytes([level, strategy, mem_level - 1])
    out += bytes([1]) + rng(flush_every - 1, (96 << 10) - 1) if flush_every else bytes([0])
    return out + rng(target, 384 << 10) + struct.pack("<I", 0x5EED) + ops


def block_finder_seeds():
    # ops: 0 int16 triangle signal (samples, amplitude, period, noise), 1 noise, 2 copy,
    # 3 run, 4 words.
    signal = bytes([0]) + (20000 - 1).to_bytes(2, "big") + struct.pack("<H", 3000) \
        + (700 - 2).to_bytes(2, "big") + bytes([40])
    noise = bytes([1]) + (3000 - 1).to_bytes(2, "big")
    words = bytes([4]) + (3000 - 1).to_bytes(2, "big")
    write("block_finder", "int16_level6",
          finder_input(0, 200000) + finder_recipe(6, 0, 8, 0, 300 << 10, signal * 8))
    write("block_finder", "mixed_level1_flush",
          finder_input(0, 90001, warmup=100 << 10) +
          finder_recipe(1, 0, 8, 30000, 250 << 10, (signal + noise + words) * 4))
    write("block_finder", "fixed_level9",
          finder_input(0, 12345) + finder_recipe(9, 4, 9, 0, 200 << 10, signal * 4))
    # int16 sections, each 32 fresh samples then copies of them, in blocks of 128 symbols
    # (memLevel 1): many dynamic blocks, and a window known a few sections after any of them.
    state, samples = 1, b""
    for _ in range(12):
        section = b""
        for _ in range(32):
            state = (state * 1103515245 + 12345) % (1 << 31)
            section += struct.pack("<h", (state >> 8) % 4001 - 2000)
        samples += section * 180
    c = zlib.compressobj(6, zlib.DEFLATED, -15, 1, zlib.Z_DEFAULT_STRATEGY)
    write("block_finder", "raw_int16_level6", finder_input(1, 3001) + c.compress(samples) + c.flush())
    write("block_finder", "raw_garbage",
          finder_input(1, 3, candidates=8) + bytes((i * 151 + 4) % 256 for i in range(2048)))


# ---------------------------------------------------------------- growing_member
# Op byte: bit 0 the session, (byte >> 1) % 16 the operation (growing_member_fuzzer.cc).
BEGIN, END, WRITE, SETATTR, TRUNC, SNAP, FINAL, RESUME, REMOVE = 0, 2, 3, 9, 11, 12, 13, 14, 15


def op(kind, session=0):
    return bytes([(kind << 1) | session])


def begin(session=0, append=False, header=None):
    """header: (descr index, shape index, fortran, count, variant, extra bytes) of
    WriterHeader (variant 0 padded: one extra byte, 1 damaged: offset and value, else none)."""
    out = op(BEGIN, session) + bytes([0 if append else 1])
    if header is None:
        return out + b"\x00"
    d, s, fo, count, variant, extra = header
    return out + b"\x01" + bytes([d, s, fo]) + count.to_bytes(2, "big") + bytes([variant]) + extra


def write_op(n, session=0, stray=None, append=False):
    """stray: a write at that offset instead of the writer's position (2 bytes)."""
    out = op(WRITE, session) + n.to_bytes(2, "big")
    out += bytes([0]) + stray.to_bytes(2, "big") if stray is not None else bytes([1])
    return out + (b"\x00" if append else b"")


def setattr_op(attr, value, newline=0):
    return op(SETATTR) + bytes([attr, value, newline])


def trunc(pick, size=0):
    return op(TRUNC) + bytes([pick]) + size.to_bytes(2, "little")


def create(npy=True, declared=None):
    out = bytes([1 if npy else 0])
    if not npy:
        return out
    if declared is None:
        return out + b"\x00"
    d, s, fo = declared
    return out + b"\x01" + bytes([d, s, fo])


def growing_seeds():
    numpy_header = (0, 3, 0, 10, 2, b"")  # '<i2', frames of 2x5, C order, numpy's layout
    seq = create() + begin(header=numpy_header) + write_op(40) + write_op(100) + write_op(33)
    seq += op(SNAP) + b"\x01" + write_op(300) + op(SNAP) + b"\x00" + op(FINAL) + op(END)
    seq += trunc(1) + trunc(3)
    write("growing_member", "header_first", seq)
    seq = create(declared=(1, 2, 0)) + begin() + write_op(7) + write_op(8) + op(RESUME)
    seq += begin() + write_op(5) + write_op(9, stray=3) + op(FINAL)
    write("growing_member", "declared_raw_resume", seq)
    seq = create() + setattr_op(0, 0) + setattr_op(1, 3) + begin() + write_op(50)
    seq += setattr_op(0, 2, 1) + trunc(5, 12)
    write("growing_member", "xattrs", seq)
    seq = create() + begin(header=(6, 2, 1, 0, 0, b"\x03")) + write_op(20) + op(END)
    seq += begin(1) + write_op(80, 1) + begin(0) + trunc(0) + write_op(64, 1)
    write("growing_member", "padded_two_writers", seq)
    seq = create(npy=False) + begin(append=True) + write_op(100, append=True)
    seq += write_op(50, append=True) + op(FINAL) + op(RESUME) + op(REMOVE) + begin()
    write("growing_member", "verbatim_append", seq)
    seq = create() + begin(header=(2, 1, 0, 3, 1, b"\x30\x41")) + write_op(200) + trunc(0)
    seq += op(REMOVE) + begin()
    write("growing_member", "damaged_header", seq)
    # Found by the fuzzer: user.npy.shape alone, then a writer's header with another frame
    # shape; setting the descr that getfattr then shows must succeed.
    seq = create() + setattr_op(1, 2) + begin(header=(2, 3, 0, 5, 2, b"")) + write_op(300)
    seq += setattr_op(2, 0)
    write("growing_member", "regress_partial_xattr_then_header", seq)


if __name__ == "__main__":
    warnings.simplefilter("ignore")  # numpy's "format 3.0" and zipfile's "duplicate name"
    npy_header_seeds()
    zip_seeds()
    sidecar_seeds()
    deflate_seeds()
    growing_seeds()
    block_finder_seeds()
    for corpus in sorted(os.listdir(OUT)):
        files = os.listdir(os.path.join(OUT, corpus))
        size = sum(os.path.getsize(os.path.join(OUT, corpus, f)) for f in files)
        print(f"{corpus}: {len(files)} seeds, {size} bytes")
