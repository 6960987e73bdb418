"""Mount tests for the write side: new members in a live npzfs mount, the
append-only rules, crash recovery and finalize on unmount.
"""
import errno
import json
import io
import os
import shutil
import subprocess
import zipfile

import numpy as np
import pytest

from conftest import NPZ_BIN, is_mounted, mounted, require_fuse, start_daemon, tmpfs

PYTHON = os.environ.get("NPZFS_PYTHON", "/usr/bin/python3")
SHAPE = (4, 8)
DTYPE = "<u2"
FRAME_BYTES = 4 * 8 * 2
FRAME_OPT = "frame=adc*:<u2:4x8"


def frame(i):
    return np.full(SHAPE, i % 65536, dtype=DTYPE)


def frames(start, stop):
    return np.stack([frame(i) for i in range(start, stop)]) if stop > start else \
        np.zeros((0,) + SHAPE, dtype=DTYPE)


def npy_bytes(array):
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


# A writable mount of an archive that may not exist yet.
CREATE = ("-o", "create")


def result_file(m):
    """The file the daemon writes its finalize outcome to (named by the mount root)."""
    assert m.result_path, "the daemon published no result file"
    return m.result_path


def finalized_ok(m, archive):
    """Unmounts, waits for finalize and checks the exit code and the result file."""
    code = m.unmount()
    assert code == 0, m.log()
    with open(result_file(m)) as f:
        assert f.readline().strip() == "ok"
    os.unlink(result_file(m))  # read: done with it, as npz umount would be
    with zipfile.ZipFile(archive) as z:
        assert z.testzip() is None
    r = subprocess.run(["unzip", "-tq", str(archive)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_np_save_and_cp_give_members_identical_to_numpys_files(tmp_path):
    archive = tmp_path / "rec.npz"
    a = np.arange(6000, dtype="<f4").reshape(100, 60)
    b = np.asfortranarray(np.arange(24, dtype=">i8").reshape(4, 6))
    src = tmp_path / "b.npy"
    np.save(src, b)
    with mounted(archive, tmp_path / "mnt", *CREATE) as m:
        with open(m.path("a.npy"), "wb") as f:
            np.save(f, a)
        subprocess.run(["cp", str(src), m.mnt + "/"], check=True)
        # Visible while mounted: exactly numpy's file.
        assert open(m.path("a.npy"), "rb").read() == npy_bytes(a)
        assert open(m.path("b.npy"), "rb").read() == src.read_bytes()
        assert np.array_equal(np.load(m.path("a.npy"), mmap_mode="r"), a)
    finalized_ok(m, archive)
    with zipfile.ZipFile(archive) as z:
        assert z.read("a.npy") == npy_bytes(a)
        assert z.read("b.npy") == src.read_bytes()
    with np.load(archive) as npz:
        assert np.array_equal(npz["a"], a) and np.array_equal(npz["b"], b)
    assert not os.path.exists(tmp_path / ".rec.npz.npzfs-spool")


def test_raw_frames_by_dd_with_a_frame_option(tmp_path):
    archive = tmp_path / "rec.npz"
    raw = tmp_path / "raw.bin"
    raw.write_bytes(frames(0, 50).tobytes())
    with mounted(archive, tmp_path / "mnt", *CREATE, "-o", FRAME_OPT, "-o", "compress") as m:
        subprocess.run(["dd", f"if={raw}", f"of={m.path('adc0.npy')}", "bs=100", "status=none"],
                       check=True)
        assert np.array_equal(np.load(m.path("adc0.npy")), frames(0, 50))
    finalized_ok(m, archive)
    with zipfile.ZipFile(archive) as z:
        assert z.getinfo("adc0.npy").compress_type == zipfile.ZIP_DEFLATED
    with np.load(archive) as npz:
        assert np.array_equal(npz["adc0"], frames(0, 50))


def write_two_frames_if_raw(m, name, raw):
    """Writes two raw frames to new member `name`: accepted if a frame= pattern matches it
    (raw), else EINVAL (a .npy with no layout), and the empty member is removed."""
    fd = os.open(m.path(name), os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        if raw:
            os.write(fd, frames(0, 2).tobytes())
        else:
            expect_errno(errno.EINVAL, os.write, fd, frames(0, 2).tobytes())
    finally:
        os.close(fd)
    if not raw:
        os.unlink(m.path(name))


def test_frame_patterns_match_file_names_or_paths_as_a_shell_does(tmp_path):
    archive = tmp_path / "rec.npz"
    options = ("-o", "frame=adc*:<u2:4x8", "-o", "frame=run*/cam?.npy:<u2:4x8")
    with mounted(archive, tmp_path / "mnt", *CREATE, *options) as m:
        for d in ("d", "run1", "run1/deep"):
            os.mkdir(m.path(d))
        # No '/': the file name, in any directory. With '/': the path; * stays in its part.
        for name, raw in (("d/adc3.npy", True), ("run1/cam2.npy", True),
                          ("run1/deep/cam2.npy", False)):
            write_two_frames_if_raw(m, name, raw)
    finalized_ok(m, archive)
    with np.load(archive) as npz:
        assert sorted(npz.files) == ["d/adc3", "run1/cam2"]
        assert np.array_equal(npz["d/adc3"], frames(0, 2))


def test_a_frame_pattern_matches_a_colon_written_in_brackets_and_keeps_its_classes(tmp_path):
    archive = tmp_path / "rec.npz"
    # A ':' ends PATTERN unless it is in a bracket expression, so "[:]" matches a ':' in a
    # name (instruments name files by time) and "[[:digit:]]" is still a character class.
    options = ("-o", "frame=run-12[:]30*:<u2:4x8", "-o", "frame=cam[[:digit:]].npy:<u2:4x8")
    with mounted(archive, tmp_path / "mnt", *CREATE, *options) as m:
        for name, raw in (("run-12:30:05.npy", True), ("cam7.npy", True),
                          ("run-12-30.npy", False), ("camx.npy", False)):
            write_two_frames_if_raw(m, name, raw)
    finalized_ok(m, archive)
    with np.load(archive) as npz:
        assert sorted(npz.files) == ["cam7", "run-12:30:05"]
        assert np.array_equal(npz["run-12:30:05"], frames(0, 2))


def test_raw_frames_with_layout_xattrs(tmp_path):
    archive = tmp_path / "rec.npz"
    with mounted(archive, tmp_path / "mnt", *CREATE) as m:
        p = m.path("cam.npy")
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.setxattr(p, "user.npy.descr", b"<u2")
            os.setxattr(p, "user.npy.shape", b"4,8")
            assert os.getxattr(p, "user.npy.descr") == b"<u2"
            os.write(fd, frames(0, 10).tobytes())
        finally:
            os.close(fd)
        assert np.array_equal(np.load(p), frames(0, 10))
    finalized_ok(m, archive)
    with np.load(archive) as npz:
        assert np.array_equal(npz["cam"], frames(0, 10))


def test_setxattr_honours_xattr_create_and_xattr_replace(tmp_path):
    archive = tmp_path / "rec.npz"
    with mounted(archive, tmp_path / "mnt", *CREATE) as m:
        p = m.path("cam.npy")
        open(p, "wb").close()
        with pytest.raises(OSError) as e:
            os.setxattr(p, "user.npy.descr", b"<u2", os.XATTR_REPLACE)
        assert e.value.errno == errno.ENODATA
        os.setxattr(p, "user.npy.descr", b"<u2", os.XATTR_CREATE)
        with pytest.raises(OSError) as e:
            os.setxattr(p, "user.npy.descr", b"<u4", os.XATTR_CREATE)
        assert e.value.errno == errno.EEXIST
        assert os.getxattr(p, "user.npy.descr") == b"<u2"
        os.setxattr(p, "user.npy.descr", b"<u4", os.XATTR_REPLACE)
        os.setxattr(p, "user.npy.shape", b"4,8", os.XATTR_CREATE)
        with open(p, "ab") as f:
            f.write(np.zeros((2, 4, 8), "<u4").tobytes())
        assert np.load(p).dtype == np.dtype("<u4")
    finalized_ok(m, archive)


def test_a_partial_frame_is_held_back_until_it_completes(tmp_path):
    archive = tmp_path / "rec.npz"
    with mounted(archive, tmp_path / "mnt", *CREATE, "-o", FRAME_OPT) as m:
        p = m.path("adc.npy")
        fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            data = frames(0, 3).tobytes()
            os.write(fd, data[:FRAME_BYTES + 10])
            header_len = os.stat(p).st_size - FRAME_BYTES
            assert np.load(p).shape == (1,) + SHAPE
            os.write(fd, data[FRAME_BYTES + 10:2 * FRAME_BYTES - 1])
            assert os.stat(p).st_size == header_len + FRAME_BYTES
            os.write(fd, data[2 * FRAME_BYTES - 1:])
            assert os.stat(p).st_size == header_len + 3 * FRAME_BYTES
            assert np.array_equal(np.load(p), frames(0, 3))
            os.write(fd, frame(3).tobytes()[:5])  # left partial at unmount: dropped
        finally:
            os.close(fd)
    finalized_ok(m, archive)
    with np.load(archive) as npz:
        assert np.array_equal(npz["adc"], frames(0, 3))


def test_a_non_npy_file_is_kept_verbatim(tmp_path):
    archive = tmp_path / "rec.npz"
    text = b'{"run": 7, "notes": "verbatim"}\n' * 100
    with mounted(archive, tmp_path / "mnt", *CREATE) as m:
        with open(m.path("meta.json"), "wb") as f:
            f.write(text[:1000])
            f.write(text[1000:])
        with open(m.path("meta.json"), "ab") as f:
            f.write(b"tail")
        assert open(m.path("meta.json"), "rb").read() == text + b"tail"
    finalized_ok(m, archive)
    with zipfile.ZipFile(archive) as z:
        assert z.read("meta.json") == text + b"tail"


WRITER = r"""
import os, sys, time, numpy as np
path, n = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
rng = np.random.default_rng(5)
blob = b"".join(np.full((4, 8), i % 65536, dtype="<u2").tobytes() for i in range(n))
pos = 0
while pos < len(blob):  # odd-sized writes: frames complete in the middle of writes
    k = int(rng.integers(1, 700))
    pos += os.write(fd, blob[pos:pos + k])
    time.sleep(0.002)  # an acquisition, not a copy: give the reader time to look
os.close(fd)
"""

READER = r"""
import os, sys, time, numpy as np
path, n = sys.argv[1], int(sys.argv[2])
print("ready", flush=True)
while not os.path.exists(path):
    time.sleep(0.001)
seen, last, checks = 0, -1, 0
while seen < n:
    a = np.load(path, mmap_mode="r")
    count = a.shape[0]
    assert count >= last, (count, last)
    assert count <= n, count
    # every visible frame is complete and exact
    expected = (np.arange(count) % 65536).astype("<u2")
    assert np.array_equal(np.asarray(a).reshape(count, 32), np.repeat(expected, 32).reshape(count, 32)), count
    last = seen = count
    checks += 1
    del a
print("checks", checks)
"""


def test_a_concurrent_reader_sees_only_complete_exact_frames(tmp_path):
    archive = tmp_path / "rec.npz"
    n = 2000
    with mounted(archive, tmp_path / "mnt", *CREATE, "-o", FRAME_OPT) as m:
        p = m.path("adc.npy")
        reader = subprocess.Popen([PYTHON, "-c", READER, p, str(n)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        assert reader.stdout.readline().strip() == "ready"
        writer = subprocess.run([PYTHON, "-c", WRITER, p, str(n)], capture_output=True,
                                text=True, timeout=300)
        assert writer.returncode == 0, writer.stderr
        out, err = reader.communicate(timeout=300)
        assert reader.returncode == 0, err + m.log()
        assert int(out.split()[1]) >= 10  # the reader really ran during the growth
    finalized_ok(m, archive)
    with np.load(archive) as npz:
        assert np.array_equal(npz["adc"], frames(0, n))


def expect_errno(code, fn, *args):
    with pytest.raises(OSError) as e:
        fn(*args)
    assert e.value.errno == code, (e.value, os.strerror(code))


def test_a_name_numpy_would_give_another_members_key_is_eexist(tmp_path):
    archive = tmp_path / "keys.npz"
    with zipfile.ZipFile(archive, "w") as z:  # members without ".npy", as zipfile can make
        for name in ("rx", "d/ry"):
            buf = io.BytesIO()
            np.save(buf, np.arange(3))
            z.writestr(name, buf.getvalue())
    with mounted(archive, tmp_path / "mnt") as m:
        expect_errno(errno.EEXIST, os.open, m.path("rx.npy"), os.O_WRONLY | os.O_CREAT)
        expect_errno(errno.EEXIST, os.open, m.path("d", "ry.npy"), os.O_WRONLY | os.O_CREAT)
        np.save(m.path("t.npy"), np.arange(4))
        expect_errno(errno.EEXIST, os.open, m.path("t"), os.O_WRONLY | os.O_CREAT)
        open(m.path("u"), "wb").close()
        expect_errno(errno.EEXIST, os.rename, m.path("u"), m.path("t"))
        os.rename(m.path("u"), m.path("u.npy"))  # its own key: fine
        assert os.path.exists(m.path("u.npy"))
        assert "numpy would give it the key of rx" in m.log(), m.log()
    assert m.unmount() == 0
    with np.load(archive) as z:
        assert sorted(z.files) == ["d/ry", "rx", "t"]  # u.npy never got a header


def test_forbidden_operations_fail_with_their_errno_and_keep_the_data(tmp_path):
    archive = tmp_path / "rec.npz"
    np.savez(archive, old=np.arange(5))
    old_bytes = zipfile.ZipFile(archive).read("old.npy")
    with mounted(archive, tmp_path / "mnt", *CREATE, "-o", FRAME_OPT) as m:
        p = m.path("adc.npy")
        fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, frames(0, 4).tobytes())
        visible = open(p, "rb").read()
        expect_errno(errno.EPERM, os.pwrite, fd, b"xx", 200)          # overwrite of data
        expect_errno(errno.EPERM, os.pwrite, fd, b"xx", 10 ** 6)      # a gap
        expect_errno(errno.EBUSY, os.open, p, os.O_WRONLY)             # a second writer
        os.close(fd)
        expect_errno(errno.EPERM, os.truncate, p, 10)
        expect_errno(errno.EPERM, os.unlink, p)
        expect_errno(errno.EPERM, os.rename, p, m.path("other.npy"))
        expect_errno(errno.EEXIST, os.open, m.path("old.npy"), os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        expect_errno(errno.EEXIST, os.open, m.path("old.npy"), os.O_WRONLY)
        expect_errno(errno.EPERM, os.unlink, m.path("old.npy"))
        expect_errno(errno.EPERM, os.link, p, m.path("hard.npy"))
        expect_errno(errno.EPERM, os.symlink, "adc.npy", m.path("soft.npy"))
        # a .npy without a layout: EINVAL on the first write
        fd = os.open(m.path("nolayout.npy"), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            expect_errno(errno.EINVAL, os.write, fd, b"\x00" * 64)
        finally:
            os.close(fd)
        os.unlink(m.path("nolayout.npy"))  # empty: may be removed
        assert not os.path.exists(m.path("nolayout.npy"))
        assert open(p, "rb").read() == visible
        assert open(m.path("old.npy"), "rb").read() == old_bytes
        # O_TRUNC on a new, empty file is accepted
        with open(m.path("empty.bin"), "wb") as f:
            pass
        with open(m.path("empty.bin"), "wb") as f:
            f.write(b"abc")
    finalized_ok(m, archive)
    assert "hard links cannot be made" in m.log() and "symbolic links" in m.log()
    with np.load(archive) as npz:
        assert np.array_equal(npz["adc"], frames(0, 4))
        assert np.array_equal(npz["old"], np.arange(5))
        assert "nolayout" not in npz.files


def test_files_created_and_removed_keep_no_file_open_in_the_daemon(tmp_path):
    archive = tmp_path / "rec.npz"
    np.savez(archive, old=np.arange(5))
    with mounted(archive, tmp_path / "mnt") as m:
        pid = int(os.getxattr(m.mnt, "user.npzfs.pid"))

        def open_files():
            return len(os.listdir(f"/proc/{pid}/fd"))

        def create_and_remove(count):
            for i in range(count):
                with open(m.path(f"tmp{i}.bin"), "wb"):
                    pass
                os.unlink(m.path(f"tmp{i}.bin"))

        create_and_remove(3)  # the spool directory exists from here on
        before = open_files()
        create_and_remove(200)
        assert open_files() <= before + 1, os.listdir(f"/proc/{pid}/fd")
        with open(m.path("kept.bin"), "wb") as f:
            f.write(b"kept")
    finalized_ok(m, archive)
    with zipfile.ZipFile(archive) as z:
        assert z.namelist() == ["old.npy", "kept.bin"]


def getdents_in_small_batches(dir_fd, between_batches):
    """Lists a directory with getdents64 and a 256-byte buffer, calling between_batches(names
    so far) after each batch; returns every name returned, repeats included."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(256)
    names = []
    while True:
        n = libc.syscall(217, dir_fd, buf, len(buf))  # SYS_getdents64 on x86-64
        assert n >= 0, os.strerror(ctypes.get_errno())
        if n == 0:
            return names
        pos = 0
        while pos < n:
            reclen = int.from_bytes(buf.raw[pos + 16:pos + 18], "little")
            name = buf.raw[pos + 19:pos + reclen].split(b"\0", 1)[0].decode()
            if name not in (".", ".."):
                names.append(name)
            pos += reclen
        between_batches(names)


def test_a_listing_returns_every_unchanged_entry_once_while_entries_come_and_go(tmp_path):
    archive = tmp_path / "rec.npz"
    np.savez(archive, old=np.arange(5))
    with mounted(archive, tmp_path / "mnt") as m:
        for i in range(30):
            open(m.path(f"f{i:02d}.bin"), "wb").close()
        changed = set()

        def churn(names):
            # Remove two entries already listed and add one: none may shift the cursor.
            if not changed:
                listed = [n for n in names if n.startswith("f")][:2]
                assert len(listed) == 2, names
                for name in listed:
                    os.unlink(m.path(name))
                open(m.path("z-new.bin"), "wb").close()
                changed.update(listed + ["z-new.bin"])

        fd = os.open(m.mnt, os.O_RDONLY | os.O_DIRECTORY)
        try:
            names = getdents_in_small_batches(fd, churn)
        finally:
            os.close(fd)
        assert changed, "the listing took one batch: nothing was changed during it"
        unchanged = [f"f{i:02d}.bin" for i in range(30)] + ["old.npy"]
        unchanged = [n for n in unchanged if n not in changed]
        assert sorted(n for n in names if n not in changed) == sorted(unchanged), names
    assert m.unmount() == 0


def test_a_read_only_mount_refuses_new_files(tmp_path):
    archive = tmp_path / "rec.npz"
    np.savez(archive, old=np.arange(5))
    before = archive.read_bytes()
    with mounted(archive, tmp_path / "mnt", "-o", "ro") as m:
        expect_errno(errno.EROFS, os.open, m.path("new.npy"), os.O_WRONLY | os.O_CREAT)
        expect_errno(errno.EROFS, os.mkdir, m.path("d"))
    assert m.unmount() == 0
    assert archive.read_bytes() == before


def test_a_missing_archive_is_created_only_if_something_was_written(tmp_path):
    archive = tmp_path / "new.npz"
    with mounted(archive, tmp_path / "mnt", *CREATE) as m:
        assert os.listdir(m.mnt) == []
    assert m.unmount() == 0
    assert not archive.exists()
    assert not (tmp_path / ".new.npz.npzfs-spool").exists()
    with mounted(archive, tmp_path / "mnt", *CREATE) as m:
        os.mkdir(m.path("sub"))
        np.save(m.path("sub", "x.npy"), np.arange(3))
    finalized_ok(m, archive)
    with np.load(archive) as npz:
        assert np.array_equal(npz["sub/x"], np.arange(3))


@pytest.mark.parametrize("create", [False, True])
def test_an_archive_moved_away_while_mounted_keeps_the_new_members_in_the_spool(tmp_path,
                                                                                 create):
    archive = tmp_path / "run.npz"
    np.savez(archive, old=np.arange(5))
    options = CREATE if create else ()
    with mounted(archive, tmp_path / "mnt", *options) as m:
        np.save(m.path("new.npy"), np.arange(7))
        os.rename(archive, tmp_path / "moved.npz")
    assert m.unmount() == 1
    assert "no longer exists" in m.log() and "npz recover" in m.log()
    assert not archive.exists(), "unmount made a new archive of the new members alone"
    with zipfile.ZipFile(tmp_path / "moved.npz") as z:
        assert z.namelist() == ["old.npy"]
    # Put back, the archive gets them from the spool.
    os.rename(tmp_path / "moved.npz", archive)
    recovered = subprocess.run([NPZ_BIN, "recover", str(archive)], capture_output=True,
                               text=True)
    assert recovered.returncode == 0, recovered.stderr
    with np.load(archive) as npz:
        assert sorted(npz.files) == ["new", "old"]
        assert np.array_equal(npz["new"], np.arange(7))


def test_tar_x_and_cp_a_into_the_mount_succeed(tmp_path):
    src = tmp_path / "src"
    (src / "d" / "e").mkdir(parents=True)
    np.save(src / "d" / "a.npy", np.arange(4))
    np.save(src / "d" / "e" / "b.npy", np.ones((2, 3)))
    os.utime(src / "d", (1_000_000_000, 1_000_000_000))
    os.chmod(src / "d" / "e", 0o700)
    subprocess.run(["tar", "-C", str(src), "-cf", str(tmp_path / "t.tar"), "d"], check=True)
    archive = tmp_path / "t.npz"
    with mounted(archive, tmp_path / "mnt", *CREATE) as m:
        os.mkdir(m.path("t"))
        # tar sets each directory's mode and times after its files; cp -a likewise.
        tar = subprocess.run(["tar", "-C", m.path("t"), "-xf", str(tmp_path / "t.tar")],
                             capture_output=True, text=True)
        assert tar.returncode == 0, tar.stderr
        cp = subprocess.run(["cp", "-a", str(src / "d"), m.path("c")], capture_output=True,
                            text=True)
        assert cp.returncode == 0, cp.stderr
    finalized_ok(m, archive)
    with np.load(archive) as npz:
        assert sorted(npz.files) == ["c/a", "c/e/b", "t/d/a", "t/d/e/b"]
        assert np.array_equal(npz["t/d/e/b"], np.ones((2, 3)))


def test_np_save_of_arrays_that_cannot_grow_keeps_them_verbatim(tmp_path):
    # A 0-d array, frames of zero bytes, an object array: np.save writes them whole; they
    # cannot grow frame by frame, so the mount keeps the bytes as written (before: EINVAL).
    arrays = {"scalar": np.float64(3.5), "empty_frames": np.zeros((4, 0)),
              "objects": np.array([1, "a", None], dtype=object)}
    archive = tmp_path / "v.npz"
    with mounted(archive, tmp_path / "mnt", *CREATE) as m:
        for name, a in arrays.items():
            np.save(m.path(name + ".npy"), a, allow_pickle=True)
            assert read_bytes(m.path(name + ".npy")) == npy_bytes(a)
        assert np.load(m.path("scalar.npy")) == 3.5
    finalized_ok(m, archive)
    assert "kept verbatim" in m.log()
    with np.load(archive, allow_pickle=True) as npz:
        assert npz["scalar"] == 3.5 and npz["scalar"].shape == ()
        assert npz["empty_frames"].shape == (4, 0)
        assert list(npz["objects"]) == [1, "a", None]


def test_a_name_another_program_took_meanwhile_keeps_the_member_in_the_spool_with_a_way_out(
        tmp_path):
    archive = tmp_path / "run.npz"
    np.savez(archive, old=np.arange(5))
    np.save(tmp_path / "theirs.npy", np.arange(20))
    with mounted(archive, tmp_path / "mnt") as m:
        np.save(m.path("n1.npy"), np.arange(3))
        np.save(m.path("n2.npy"), np.arange(4))
        added = subprocess.run([NPZ_BIN, "add", str(archive), "n1", str(tmp_path / "theirs.npy")],
                               capture_output=True, text=True)
        assert added.returncode == 0, added.stderr
    assert m.unmount() == 1
    assert "rename the new member's file in the spool" in m.log(), m.log()
    spool = tmp_path / ".run.npz.npzfs-spool"
    os.rename(spool / "n1.npy", spool / "n1b.npy")
    recovered = subprocess.run([NPZ_BIN, "recover", str(archive)], capture_output=True,
                               text=True)
    assert recovered.returncode == 0, recovered.stderr
    with np.load(archive) as npz:
        assert sorted(npz.files) == ["n1", "n1b", "n2", "old"]
        assert np.array_equal(npz["n1"], np.arange(20))
        assert np.array_equal(npz["n1b"], np.arange(3))


def test_an_empty_file_is_a_new_archive_to_create(tmp_path):
    archive = tmp_path / "touched.npz"
    archive.write_bytes(b"")
    with mounted(archive, tmp_path / "mnt", *CREATE) as m:
        assert os.listdir(m.mnt) == []
        np.save(m.path("x.npy"), np.arange(3))
    finalized_ok(m, archive)
    with np.load(archive) as npz:
        assert np.array_equal(npz["x"], np.arange(3))


def test_a_name_that_is_not_utf8_is_refused_so_numpy_can_read_the_archive(tmp_path):
    # Member names are UTF-8 in a zip; one that is not made the finalized archive unreadable
    # to numpy (and then a finalize that refused it).
    archive = tmp_path / "names.npz"
    with mounted(archive, tmp_path / "mnt", *CREATE) as m:
        mnt = os.fsencode(m.mnt)
        expect_errno(errno.EINVAL, os.open, mnt + b"/bad\xff.npy", os.O_WRONLY | os.O_CREAT,
                     0o644)
        expect_errno(errno.EINVAL, os.mkdir, mnt + b"/dir\xfe")
        np.save(m.path("caf\u00e9.npy"), np.arange(3))  # UTF-8 is fine
        with open(m.path("empty.txt"), "wb"):
            pass
        expect_errno(errno.EINVAL, os.rename, m.path("empty.txt"), mnt + b"/x\xff.txt")
    finalized_ok(m, archive)
    assert "not valid UTF-8" in m.log()
    with np.load(archive) as npz:
        assert np.array_equal(npz["caf\u00e9"], np.arange(3))


def test_a_second_daemon_cannot_share_the_spool(tmp_path):
    archive = tmp_path / "rec.npz"
    with mounted(archive, tmp_path / "mnt", *CREATE) as m:
        np.save(m.path("x.npy"), np.arange(4))
        (tmp_path / "mnt2").mkdir()
        r = subprocess.run([m.proc.args[0], "-f", *CREATE, str(archive), str(tmp_path / "mnt2")],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode != 0
        assert "spool" in r.stderr and "rec.npz" in r.stderr
        assert not is_mounted(tmp_path / "mnt2")
        assert np.array_equal(np.load(m.path("x.npy")), np.arange(4))
    finalized_ok(m, archive)


def test_sigkill_twenty_times_keeps_every_frame_that_reached_the_spool(tmp_path):
    archive = tmp_path / "rec.npz"
    mnt = tmp_path / "mnt"
    written = 0
    for round_ in range(20):
        m = start_daemon(archive, mnt, *CREATE, "-o", FRAME_OPT)
        try:
            p = m.path("adc.npy")
            if round_ > 0:
                shown = np.load(p).shape[0]
                assert shown == written, (round_, m.log())
                assert "resumed" in m.log()
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.write(fd, frames(written, written + 7).tobytes())
            written += 7
            if round_ % 2:
                os.write(fd, frame(written).tobytes()[:11])  # a partial frame dies with it
            os.close(fd)
        finally:
            m.kill()
        assert not is_mounted(mnt)
    with mounted(archive, mnt, *CREATE) as m:
        assert np.load(m.path("adc.npy")).shape[0] == written
    finalized_ok(m, archive)
    with np.load(archive) as npz:
        assert np.array_equal(npz["adc"], frames(0, written))


def test_fsync_then_sigkill_keeps_every_fsynced_frame(tmp_path):
    archive = tmp_path / "rec.npz"
    m = start_daemon(archive, tmp_path / "mnt", *CREATE, "-o", FRAME_OPT)
    try:
        fd = os.open(m.path("adc.npy"), os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, frames(0, 25).tobytes())
        os.fsync(fd)
    finally:
        m.kill()
    with mounted(archive, tmp_path / "mnt", *CREATE) as m:
        assert np.array_equal(np.load(m.path("adc.npy")), frames(0, 25))
    finalized_ok(m, archive)


def raw_member_bytes(blob, info):
    """The local header plus data of one member, as stored."""
    off = info.header_offset
    name_len = int.from_bytes(blob[off + 26:off + 28], "little")
    extra_len = int.from_bytes(blob[off + 28:off + 30], "little")
    return blob[off:off + 30 + name_len + extra_len + info.compress_size]


def test_appending_to_a_numpy_archive_keeps_old_members_byte_identical(tmp_path):
    archive = tmp_path / "old.npz"
    np.savez_compressed(archive, x=np.arange(1000), y=np.eye(5))
    before = archive.read_bytes()
    with zipfile.ZipFile(archive) as z:
        old = {i.filename: raw_member_bytes(before, i) for i in z.infolist()}
    with mounted(archive, tmp_path / "mnt", *CREATE) as m:
        np.save(m.path("z.npy"), np.arange(7))
    finalized_ok(m, archive)
    after = archive.read_bytes()
    with zipfile.ZipFile(archive) as z:
        for i in z.infolist():
            if i.filename in old:
                assert raw_member_bytes(after, i) == old[i.filename]
        assert sorted(z.namelist()) == ["x.npy", "y.npy", "z.npy"]


def test_enospc_during_finalize_leaves_archive_and_spool_intact(tmp_path):
    require_fuse()
    # `mounted` always unmounts the FUSE mount; `tmpfs` the tmpfs.
    with tmpfs(tmp_path / "small", size="8m") as small:
        archive = small / "rec.npz"
        np.savez(archive, old=np.arange(100))
        before = archive.read_bytes()
        big = np.random.default_rng(3).integers(0, 65535, size=(5 << 20) // 2, dtype=np.uint16)
        with mounted(archive, tmp_path / "mnt", *CREATE) as m:
            np.save(m.path("big.npy"), big)
            pid = int(os.getxattr(m.mnt, "user.npzfs.pid"))
            assert pid == m.proc.pid
            assert os.getxattr(m.mnt, "user.npzfs.result").decode() == result_file(m)
            assert os.path.isabs(result_file(m))
            reported = None
            if os.path.exists(NPZ_BIN):
                r = subprocess.run([NPZ_BIN, "umount", m.mnt], capture_output=True, text=True,
                                   timeout=120)
                assert r.returncode != 0
                assert "space" in (r.stdout + r.stderr).lower()
                reported = r.stderr
        code = m.unmount()
        assert code != 0, m.log()
        if reported is None:
            with open(result_file(m)) as f:
                line = f.readline()
            assert line.startswith("error: ") and "space" in line.lower(), line
        else:
            # npz umount read the daemon's "error: ..." result, and removed it once read.
            assert "finalize failed" in reported and "space" in reported.lower(), reported
            assert (f"the new members stay in the spool {small}/.rec.npz.npzfs-spool: free "
                    f"space on the filesystem of {archive} (a finalize writes there), then "
                    f"run `npz recover {archive}`") in reported
            assert not os.path.exists(result_file(m))
        assert archive.read_bytes() == before
        spool = small / ".rec.npz.npzfs-spool"
        assert os.path.getsize(spool / "big.npy") == len(npy_bytes(big))


def test_a_full_disk_fails_new_files_with_enospc_until_there_is_room(tmp_path):
    require_fuse()
    # `mounted` always unmounts the FUSE mount; `tmpfs` the tmpfs.
    with tmpfs(tmp_path / "small", size="4m") as small:
        archive = small / "rec.npz"
        np.savez(archive, old=np.arange(100))
        filler = small / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            with pytest.raises(OSError):
                while True:
                    os.write(fd, b"\0" * 4096)
        finally:
            os.close(fd)
        with mounted(archive, tmp_path / "mnt") as m:
            # Not a read-only file system: the disk is full, for now.
            with pytest.raises(OSError) as e:
                np.save(m.path("new.npy"), np.arange(3))
            assert e.value.errno == errno.ENOSPC
            assert "-o ro" not in m.log() and "Read-only" not in m.log(), m.log()
        assert m.unmount() == 0, m.log()
        # A spool the failed create may have left holds nothing: the next mounts neither fail
        # for it (its record cannot be written on a full disk) nor warn of new members in it.
        with mounted(archive, tmp_path / "mnt", "-o", "ro") as m:
            assert "holds new members" not in m.log(), m.log()
        with mounted(archive, tmp_path / "mnt") as m:
            np.testing.assert_array_equal(np.load(m.path("old.npy")), np.arange(100))
            filler.unlink()
            np.save(m.path("new.npy"), np.arange(3))
        assert m.unmount() == 0, m.log()
        with np.load(archive) as z:
            assert sorted(z.files) == ["new", "old"]


def test_a_write_the_full_disk_refuses_after_it_was_acknowledged_fails_the_next_write(tmp_path):
    """Data writes are acknowledged before their bytes reach the spool file (the writer's
    next write travels meanwhile). When the disk then refuses one, the writer learns it from
    its next write or its close, with ENOSPC, and the member keeps every frame before it."""
    require_fuse()
    with tmpfs(tmp_path / "small", size="4m") as small:
        archive = small / "rec.npz"
        np.savez(archive, old=np.arange(100))
        filler = small / "filler"
        filler.write_bytes(b"\0" * (1 << 20))
        chunk = np.arange(16 * 256 * 128, dtype="<u2")  # 1 MiB: 16 frames of 64 KiB
        m = start_daemon(archive, tmp_path / "mnt", "-o", "frame=rec*:<u2:256x128")
        try:
            fd = os.open(m.path("rec.npy"), os.O_WRONLY | os.O_CREAT, 0o644)
            returned, error = 0, None
            try:
                for _ in range(16):  # more than the tmpfs holds
                    os.write(fd, chunk.tobytes())
                    returned += 1
            except OSError as e:
                error = e
            try:
                os.close(fd)
            except OSError as e:
                error = error or e
            assert error is not None and error.errno == errno.ENOSPC, error
            assert "was acknowledged, then failed" in m.log(), m.log()
            kept = np.load(m.path("rec.npy"))
            # The write whose bytes the disk refused had returned: the member holds less.
            assert 0 < kept.shape[0] < returned * 16, (kept.shape, returned)
            np.testing.assert_array_equal(
                kept.reshape(-1), np.resize(chunk, kept.shape[0] * 256 * 128))
            # Another writer goes on from what the member holds, once there is room.
            filler.unlink()
            with open(m.path("rec.npy"), "ab") as f:
                f.write(chunk[:256 * 128].tobytes())
            assert np.load(m.path("rec.npy")).shape[0] == kept.shape[0] + 1
        finally:
            m.unmount()


def test_a_renamed_empty_member_keeps_its_layout_and_takes_writes(tmp_path):
    """Create an empty member, declare its layout with xattrs, rename it, then write: the
    member keeps its object (layout, attributes) under the new name, and a handle opened
    before the rename keeps writing to it."""
    archive = tmp_path / "rec.npz"
    with mounted(archive, tmp_path / "mnt", *CREATE) as m:
        first = m.path("first.npy")
        fd = os.open(first, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.close(fd)
        os.setxattr(first, "user.npy.descr", b"<u2")
        os.setxattr(first, "user.npy.shape", b"4,8")
        os.mkdir(m.path("sub"))
        renamed = m.path("sub", "renamed.npy")
        os.rename(first, renamed)
        assert not os.path.exists(first)
        assert os.getxattr(renamed, "user.npy.shape") == b"4,8"
        fd = os.open(renamed, os.O_WRONLY)
        try:
            os.write(fd, frames(0, 6).tobytes())
        finally:
            os.close(fd)
        assert np.array_equal(np.load(renamed), frames(0, 6))

        # A writer that opened the member before the rename goes on writing to it.
        early = m.path("early.npy")
        fd = os.open(early, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.setxattr(early, "user.npy.descr", b"<u2")
            os.setxattr(early, "user.npy.shape", b"4,8")
            os.rename(early, m.path("late.npy"))
            os.write(fd, frames(0, 3).tobytes())
        finally:
            os.close(fd)
        assert np.array_equal(np.load(m.path("late.npy")), frames(0, 3))
    finalized_ok(m, archive)
    with np.load(archive) as npz:
        assert sorted(npz.files) == ["late", "sub/renamed"]
        assert np.array_equal(npz["sub/renamed"], frames(0, 6))
        assert np.array_equal(npz["late"], frames(0, 3))


def test_the_log_counts_the_members_finalize_really_added(tmp_path):
    archive = tmp_path / "rec.npz"
    with mounted(archive, tmp_path / "mnt", *CREATE, "-o", FRAME_OPT) as m:
        open(m.path("nolayout.npy"), "wb").close()  # never gets a layout: not added
        with open(m.path("adc.npy"), "wb") as f:
            f.write(frames(0, 2).tobytes())
    finalized_ok(m, archive)
    log = m.log()
    assert "finalized 1 new member(s)" in log, log
    assert "finalized 2" not in log, log
    with np.load(archive) as npz:
        assert npz.files == ["adc"]


def test_finalize_carries_the_index_forward_to_the_new_archive(tmp_path):
    archive = tmp_path / "rec.npz"
    np.savez_compressed(archive, old=np.arange(100000))
    sidecar = tmp_path / ".rec.npz.npzfs-index"
    with mounted(archive, tmp_path / "mnt") as m:
        assert np.array_equal(np.load(m.path("old.npy")), np.arange(100000))
    assert m.unmount() == 0 and sidecar.exists()  # the index the reads taught
    before = sidecar.read_bytes()
    with mounted(archive, tmp_path / "mnt") as m:
        np.save(m.path("new.npy"), np.arange(5))
    finalized_ok(m, archive)
    assert sidecar.exists() and sidecar.read_bytes() != before, "rewritten for the new archive"
    r = subprocess.run([NPZ_BIN, "ls", "--json", str(archive)], capture_output=True, text=True)
    assert r.returncode == 0 and "stale" not in r.stderr, r.stderr
    assert {row["name"]: row["index"] for row in json.loads(r.stdout)}["old.npy"] == "complete"


def renameat2(old, new, flags):
    """renameat2(2) through libc (os.rename passes no flags); returns 0 or the errno."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd = -100
    r = libc.renameat2(at_fdcwd, os.fsencode(old), at_fdcwd, os.fsencode(new), flags)
    return 0 if r == 0 else ctypes.get_errno()


def test_rename_noreplace_is_a_plain_rename_and_exchange_is_refused(tmp_path):
    """`mv` asks for RENAME_NOREPLACE first: it must work (a rename here never replaces) and
    log no error; RENAME_EXCHANGE is refused with EINVAL."""
    noreplace, exchange = 1, 2
    archive = tmp_path / "rec.npz"
    with mounted(archive, tmp_path / "mnt", *CREATE) as m:
        for name in ("a.npy", "b.npy"):
            os.close(os.open(m.path(name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        assert renameat2(m.path("a.npy"), m.path("c.npy"), noreplace) == 0
        assert os.path.exists(m.path("c.npy")) and not os.path.exists(m.path("a.npy"))
        assert renameat2(m.path("c.npy"), m.path("b.npy"), noreplace) == errno.EEXIST
        assert renameat2(m.path("c.npy"), m.path("b.npy"), exchange) == errno.EINVAL
        errors = [line for line in m.log().splitlines() if "error: rename" in line]
        assert len(errors) == 1 and "RENAME_EXCHANGE" in errors[0], m.log()
