"""Mount tests for `-o compress`: growing members are deflated in the background while frames
arrive, finalize uses those chunks (a new archive is made of the shadow file itself, which
a kill before its rename leaves usable), and a daemon killed in the middle of that work
leaves a spool that a remount or `npz recover` finalizes correctly (the spool records the
level, so `npz recover` needs no `--compress`).

Run by meson through /usr/bin/python3 -m pytest with NPZ_BIN and NPZFS_BIN set.
"""
import os
import subprocess
import time
import zipfile

import numpy as np
import pytest

from conftest import NPZ_BIN, mounted, start_daemon

FRAME = (256, 128)  # '<i2' frames of 64 KiB
RECORD = 12  # bytes per chunk record in a shadow's index
CHUNK = 256 << 10  # the daemon's deflate chunk (WriteOptions::chunk_size)
HEADER = 32  # bytes of a shadow index's header


def frames(n, seed=0):
    t = np.arange(n * FRAME[0] * FRAME[1]).reshape((n,) + FRAME)
    noise = np.random.default_rng(seed).integers(0, 16, t.shape)
    return ((t // 7) % 3000 + noise).astype("<i2")


def spool_of(archive):
    return archive.parent / f".{archive.name}.npzfs-spool"


def shadow_chunks(archive, member="adc.npy"):
    """Chunks recorded in the member's deflated shadow (0 if there is none yet)."""
    index = spool_of(archive) / f".{member}.npzfs-deflate-index"
    return max(0, (index.stat().st_size - HEADER) // RECORD) if index.exists() else 0


def wait_for(condition, what, timeout=60):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def check_member(archive, expected):
    with zipfile.ZipFile(archive) as z:
        assert z.testzip() is None
        info = z.getinfo("adc.npy")
        assert info.compress_type == zipfile.ZIP_DEFLATED
        assert any(info.extra[i:i + 2] == b"\x4e\x5a" for i in range(0, len(info.extra) - 1))
    with np.load(archive) as z:
        np.testing.assert_array_equal(z["adc"], expected)
    r = subprocess.run([NPZ_BIN, "verify", str(archive)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert not spool_of(archive).exists()


def test_frames_are_deflated_while_they_arrive_and_finalize_copies_them(tmp_path):
    archive = tmp_path / "a.npz"
    data = frames(96)  # 6 MiB: 24 chunks
    chunks = data.nbytes // CHUNK
    with mounted(archive, tmp_path / "mnt", "-o", "create", "-o", "compress",
                 "-o", "frame=adc*:<i2:256x128") as m:
        with open(m.path("adc.npy"), "wb") as f:
            f.write(data.tobytes())
        wait_for(lambda: shadow_chunks(archive) == chunks, "every chunk deflated in the background")
        # Readers of the growing member still see a valid .npy.
        np.testing.assert_array_equal(np.load(m.path("adc.npy")), data)
        assert m.unmount() == 0, m.log()
    assert f"{chunks} chunk(s) deflated in the background are used" in m.log()
    check_member(archive, data)


@pytest.mark.parametrize("recovery", ["remount", "npz recover"])
def test_a_daemon_killed_in_the_middle_of_deflating_leaves_a_spool_that_finalizes(tmp_path,
                                                                                   recovery):
    archive = tmp_path / "a.npz"
    np.savez(archive, old=np.arange(10))
    data = frames(1536, seed=1)  # 96 MiB: 384 chunks
    m = start_daemon(archive, tmp_path / "mnt", "-o", "compress", "-o", "frame=adc*:<i2:256x128")
    try:
        with open(m.path("adc.npy"), "wb") as f:
            f.write(data.tobytes())
            f.flush()
            os.fsync(f.fileno())
        # Records come in batches of 256 chunks (64 MiB): when the first is on disk, 128
        # chunks (about a second of deflating) are still to come.
        wait_for(lambda: shadow_chunks(archive) >= 1, "background deflate")
        m.kill()  # SIGKILL, most likely in the middle of a chunk
        killed_at = shadow_chunks(archive)
    finally:
        m.kill()
    assert killed_at < data.nbytes // CHUNK, "the background work had finished: nothing stopped"
    assert spool_of(archive).exists()
    if recovery == "remount":
        with mounted(archive, tmp_path / "mnt", "-o", "compress") as again:
            np.testing.assert_array_equal(np.load(again.path("adc.npy")), data)
            assert again.unmount() == 0, again.log()
        assert "deflated in the background are used" in again.log()
    else:
        r = subprocess.run([NPZ_BIN, "recover", str(archive), "--compress"], capture_output=True,
                           text=True)
        assert r.returncode == 0, r.stderr
        assert f"adc.npy: {killed_at} chunk(s) deflated in the background are used" in r.stderr
    check_member(archive, data)
    with np.load(archive) as z:
        np.testing.assert_array_equal(z["old"], np.arange(10))


@pytest.mark.parametrize("recovery", ["npz recover", "remount without -o compress"])
def test_the_spool_remembers_the_level_of_the_mount_that_died(tmp_path, recovery):
    archive = tmp_path / "a.npz"
    np.savez(archive, old=np.arange(10))
    data = frames(16, seed=2)
    m = start_daemon(archive, tmp_path / "mnt", "-o", "compress=3", "-o",
                     "frame=adc*:<i2:256x128")
    try:
        with open(m.path("adc.npy"), "wb") as f:
            f.write(data.tobytes())
            f.flush()
            os.fsync(f.fileno())
    finally:
        m.kill()
    assert "compress 3" in (spool_of(archive) / ".npzfs-lock").read_text()
    if recovery == "npz recover":
        r = subprocess.run([NPZ_BIN, "recover", str(archive)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert "deflated at level 3, as the mount that made them asked" in r.stderr
        check_member(archive, data)
    else:
        with mounted(archive, tmp_path / "mnt") as again:
            assert again.unmount() == 0, again.log()
        assert "asked for them deflated (-o compress=3); this mount stores them" in again.log()
        with zipfile.ZipFile(archive) as z:
            assert z.getinfo("adc.npy").compress_type == zipfile.ZIP_STORED
        with np.load(archive) as z:
            np.testing.assert_array_equal(z["adc"], data)


def test_npz_recover_store_and_compress_override_the_recorded_level(tmp_path):
    for option, expected in (("--store", zipfile.ZIP_STORED), ("--compress=1", zipfile.ZIP_DEFLATED)):
        archive = tmp_path / f"{option[2:5]}.npz"
        m = start_daemon(archive, tmp_path / "mnt", "-o", "create", "-o", "compress=9")
        try:
            (tmp_path / "mnt" / "notes.txt").write_bytes(b"x" * 100000)
        finally:
            m.kill()
        r = subprocess.run([NPZ_BIN, "recover", str(archive), option], capture_output=True,
                           text=True)
        assert r.returncode == 0, r.stderr
        assert "as the mount that made them asked" not in r.stderr
        with zipfile.ZipFile(archive) as z:
            assert z.getinfo("notes.txt").compress_type == expected
            assert z.read("notes.txt") == b"x" * 100000
    r = subprocess.run([NPZ_BIN, "recover", str(archive), "--store", "--compress"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--compress and --store exclude each other" in r.stderr


def test_a_new_archive_is_made_of_the_deflated_shadow_without_copying_its_chunks(tmp_path):
    archive = tmp_path / "a.npz"
    data = frames(64)  # 4 MiB: 16 chunks
    with mounted(archive, tmp_path / "mnt", "-o", "create", "-o", "compress",
                 "-o", "frame=adc*:<i2:256x128") as m:
        with open(m.path("adc.npy"), "wb") as f:
            f.write(data.tobytes())
        wait_for(lambda: shadow_chunks(archive) == 16, "every chunk deflated in the background")
        shadow = spool_of(archive) / ".adc.npy.npzfs-deflate"
        inode = shadow.stat().st_ino
        assert m.unmount() == 0, m.log()
    assert archive.stat().st_ino == inode
    assert "member adc.npy: made of " in m.log()
    check_member(archive, data)
    r = subprocess.run(["unzip", "-tq", str(archive)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("step", ["member-data:1", "archive-synced"])
def test_a_finalize_killed_while_making_the_archive_of_the_shadow_is_redone_by_a_remount(
        tmp_path, monkeypatch, step):
    archive = tmp_path / "a.npz"
    data = frames(64, seed=2)
    options = ["-o", "compress", "-o", "frame=adc*:<i2:256x128"]
    monkeypatch.setenv("NPZFS_TEST_KILL_AT", step)
    with mounted(archive, tmp_path / "mnt", "-o", "create", *options) as m:
        monkeypatch.delenv("NPZFS_TEST_KILL_AT")
        with open(m.path("adc.npy"), "wb") as f:
            f.write(data.tobytes())
        wait_for(lambda: shadow_chunks(archive) == 16, "every chunk deflated in the background")
        assert m.unmount() == -9, m.log()
    assert not archive.exists()
    with mounted(archive, tmp_path / "mnt", "-o", "create", *options) as again:
        np.testing.assert_array_equal(np.load(again.path("adc.npy")), data)
        assert again.unmount() == 0, again.log()
    assert "16 chunk(s) deflated in the background are used" in again.log()
    assert "member adc.npy: made of " in again.log()
    check_member(archive, data)
