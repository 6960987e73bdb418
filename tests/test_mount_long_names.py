"""Mount tests for new members whose path is longer than one file name (NAME_MAX, 255 bytes).

The kernel hands npzfs any path whose every component fits in a file name; the spool keeps
such a member in a hashed spool file with a name file beside it (core/write/spool.cc,
"Spool directory layout"). These tests check that such members work like any other: written
and read back through the mount, renamed to and from short names, removed, resumed after the
daemon is killed, background-deflated, and finalized under their exact name. A FUSE daemon
is also handed components of up to 1024 bytes: those, and paths of PATH_MAX bytes or more,
are refused (a reader of the archive would skip such a member).

Run by meson through /usr/bin/python3 -m pytest with NPZ_BIN and NPZFS_BIN set.
"""
import errno
import io
import os
import time
import zipfile

import numpy as np

import pytest

from conftest import mounted, start_daemon

CREATE = ("-o", "create")
NAME_MAX = 255


def deep_path(tag, depth=3, width=240, leaf="frames.npy"):
    """A member path of `depth` directories of `width` bytes each, with the characters the
    spool escapes ('%', '/', a leading '.'), so that it is longer than a file name."""
    dirs = [("." if i == 0 else "") + f"{tag}{i}%" for i in range(depth)]
    dirs = [d + "x" * (width - len(d)) for d in dirs]
    return "/".join(dirs + [leaf])


def npy_bytes(array):
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def spool_of(archive):
    return archive.parent / f".{archive.name}.npzfs-spool"


def spool_files(archive):
    """The files of the spool directory, without its lock."""
    return sorted(f for f in os.listdir(spool_of(archive)) if f != ".npzfs-lock")


def check_spool_names(archive):
    files = spool_files(archive)
    assert all(len(f.encode()) <= NAME_MAX for f in files), files
    return files


def finalized(m, archive):
    """Unmounts (finalize) and returns the archive's member names, after checking it."""
    assert m.unmount() == 0, m.log()
    assert not spool_of(archive).exists(), m.log()
    with zipfile.ZipFile(archive) as z:
        assert z.testzip() is None
        return z.namelist()


def test_a_member_path_longer_than_255_bytes_is_written_read_back_and_finalized(tmp_path):
    archive = tmp_path / "rec.npz"
    a = np.arange(3000, dtype="<f4").reshape(100, 30)
    npy = deep_path("a")
    txt = deep_path("b", leaf="notes.txt")
    # As deep as the kernel allows below this mount point (PATH_MAX 4096 for the whole path).
    deepest = deep_path("c", depth=(4096 - len(str(tmp_path)) - 300) // 241)
    assert len(npy) > NAME_MAX and len(deepest) > 3000
    with mounted(archive, tmp_path / "mnt", *CREATE) as m:
        for member in (npy, txt, deepest):
            os.makedirs(m.path(os.path.dirname(member)), exist_ok=True)
        with open(m.path(npy), "wb") as f:
            np.save(f, a)
        with open(m.path(deepest), "wb") as f:
            np.save(f, a[:7])
        with open(m.path(txt), "w") as f:
            f.write("line 1\n")
        with open(m.path(txt), "a") as f:
            f.write("line 2\n")
        assert open(m.path(npy), "rb").read() == npy_bytes(a)
        assert np.array_equal(np.load(m.path(deepest)), a[:7])
        assert open(m.path(txt)).read() == "line 1\nline 2\n"
        assert os.listdir(m.path(os.path.dirname(npy))) == ["frames.npy"]
        files = check_spool_names(archive)
        assert len(files) == 6, files  # three hashed data files, each with its name file
    assert sorted(finalized(m, archive)) == sorted([npy, txt, deepest])
    with zipfile.ZipFile(archive) as z:
        assert z.read(txt) == b"line 1\nline 2\n"
        assert z.read(npy) == npy_bytes(a)
    with np.load(archive) as npz:
        assert np.array_equal(npz[deepest[:-4]], a[:7])
    # And the next mount reads them back from the archive.
    with mounted(archive, tmp_path / "mnt") as m:
        assert np.array_equal(np.load(m.path(npy)), a)
        assert open(m.path(txt)).read() == "line 1\nline 2\n"


def test_a_name_over_255_bytes_or_a_path_of_4096_is_refused_with_enametoolong(tmp_path):
    archive = tmp_path / "rec.npz"
    longest, too_long = "k" * (NAME_MAX - 4) + ".npy", "t" * (NAME_MAX - 3) + ".npy"
    with mounted(archive, tmp_path / "mnt", *CREATE) as m:
        with open(m.path("empty.txt"), "wb"):
            pass
        attempts = [lambda: open(m.path(too_long), "wb"), lambda: os.mkdir(m.path("d" * 256)),
                    lambda: os.rename(m.path("empty.txt"), m.path(too_long))]
        # Directories of 240 bytes, each made relative to the one before (a path given to a
        # system call is shorter than PATH_MAX, but the daemon sees the path from its root).
        fd = os.open(m.path(), os.O_RDONLY | os.O_DIRECTORY)
        depth = 0
        try:
            while True:
                name = f"{depth:03d}" + "x" * 237
                try:
                    os.mkdir(name, dir_fd=fd)
                except OSError as e:
                    assert e.errno == errno.ENAMETOOLONG, e
                    break
                depth += 1
                assert depth < 20, "a path over 4096 bytes was accepted"
                next_fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
                os.close(fd)
                fd = next_fd
            assert depth == (4096 - 1) // 241  # every directory whose path fits was made
        finally:
            os.close(fd)
        for attempt in attempts:
            with pytest.raises(OSError) as e:
                attempt()
            assert e.value.errno == errno.ENAMETOOLONG
        with open(m.path(longest), "wb") as f:
            np.save(f, np.arange(5))
        assert "the limit is 255" in m.log() and "the limit is 4095" in m.log()
    assert sorted(finalized(m, archive)) == sorted(["empty.txt", longest])
    with mounted(archive, tmp_path / "mnt") as m:  # and npzfs serves it again
        assert np.array_equal(np.load(m.path(longest)), np.arange(5))


def test_a_member_is_renamed_between_a_long_and_a_short_name_both_ways(tmp_path):
    archive = tmp_path / "rec.npz"
    long1, long2 = deep_path("p"), deep_path("q")
    with mounted(archive, tmp_path / "mnt", *CREATE) as m:
        for member in (long1, long2):
            os.makedirs(m.path(os.path.dirname(member)))
        short = m.path("first.npy")
        fd = os.open(short, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.setxattr(short, "user.npy.descr", b"<u2")
            os.setxattr(short, "user.npy.shape", b"4,8")
            os.rename(short, m.path(long1))  # short -> long
            assert not os.path.exists(short)
            assert os.getxattr(m.path(long1), "user.npy.shape") == b"4,8"
            assert len(check_spool_names(archive)) == 2
            os.rename(m.path(long1), m.path("back.npy"))  # long -> short
            assert check_spool_names(archive) == ["back.npy"]
            os.rename(m.path("back.npy"), m.path(long2))  # short -> long
            assert not os.path.exists(m.path(long1)) and not os.path.exists(m.path("back.npy"))
            assert len(check_spool_names(archive)) == 2
            # The handle opened under the first name writes to the member under its last.
            os.write(fd, np.arange(5 * 32, dtype="<u2").tobytes())
        finally:
            os.close(fd)
        assert np.load(m.path(long2)).shape == (5, 4, 8)
    assert finalized(m, archive) == [long2]
    with np.load(archive) as npz:
        assert np.array_equal(npz[long2[:-4]].ravel(), np.arange(5 * 32, dtype="<u2"))


def test_an_empty_member_with_a_long_path_is_removed_with_its_spool_files(tmp_path):
    archive = tmp_path / "rec.npz"
    member = deep_path("u")
    with mounted(archive, tmp_path / "mnt", *CREATE) as m:
        os.makedirs(m.path(os.path.dirname(member)))
        open(m.path(member), "wb").close()
        assert len(check_spool_names(archive)) == 2
        os.unlink(m.path(member))
        assert not os.path.exists(m.path(member))
        assert spool_files(archive) == []
    assert m.unmount() == 0, m.log()
    assert not archive.exists()  # nothing was written
    assert not spool_of(archive).exists()


def test_a_long_named_member_survives_sigkill_and_the_next_mount_resumes_it(tmp_path):
    archive = tmp_path / "rec.npz"
    mnt = tmp_path / "mnt"
    member = deep_path("k")
    data = np.arange(40 * 32, dtype="<u2").reshape(40, 4, 8)
    m = start_daemon(archive, mnt, *CREATE)
    try:
        os.makedirs(m.path(os.path.dirname(member)))
        fd = os.open(m.path(member), os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, npy_bytes(data[:25]))
        os.write(fd, data[25].tobytes()[:11])  # a partial frame dies with the daemon
        os.fsync(fd)
        os.close(fd)
    finally:
        m.kill()
    with mounted(archive, mnt, *CREATE) as m:
        assert f"resumed member {member} (25 frames" in m.log(), m.log()
        assert np.array_equal(np.load(m.path(member)), data[:25])
        fd = os.open(m.path(member), os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, data[25:].tobytes())
        finally:
            os.close(fd)
        assert np.array_equal(np.load(m.path(member)), data)
    assert finalized(m, archive) == [member]
    with np.load(archive) as npz:
        assert np.array_equal(npz[member[:-4]], data)


def test_a_long_named_member_is_deflated_in_the_background_and_finalized(tmp_path):
    archive = tmp_path / "rec.npz"
    member = deep_path("z")
    data = (np.arange(48 * 256 * 128) // 7 % 3000).astype("<i2").reshape(48, 256, 128)  # 3 MiB
    with mounted(archive, tmp_path / "mnt", *CREATE, "-o", "compress") as m:
        os.makedirs(m.path(os.path.dirname(member)))
        with open(m.path(member), "wb") as f:
            np.save(f, data)
        deadline = time.monotonic() + 60
        while not any(f.endswith(".npzfs-deflate-index") for f in spool_files(archive)):
            assert time.monotonic() < deadline, "no shadow for the long-named member"
            time.sleep(0.05)
        check_spool_names(archive)
    assert "background deflate stopped" not in m.log(), m.log()
    assert "deflated in the background are used" in m.log(), m.log()
    assert finalized(m, archive) == [member]
    with zipfile.ZipFile(archive) as z:
        assert z.getinfo(member).compress_type == zipfile.ZIP_DEFLATED
    with np.load(archive) as npz:
        assert np.array_equal(npz[member[:-4]], data)
