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
RECORD = 16  # bytes per chunk record in a shadow's index
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


def crashed_compress_mount(archive, mnt, level, data):
    """A mount of `archive` with -o compress=`level`, SIGKILLed after `data` was written
    (fsynced) into adc.npy: its spool waits for recovery."""
    np.savez(archive, old=np.arange(10))
    m = start_daemon(archive, mnt, "-o", f"compress={level}", "-o", "frame=adc*:<i2:256x128")
    try:
        with open(m.path("adc.npy"), "wb") as f:
            f.write(data.tobytes())
            f.flush()
            os.fsync(f.fileno())
    finally:
        m.kill()
    assert f"compress {level}\n" in (spool_of(archive) / ".npzfs-lock").read_text()


def deflated_size(archive, data):
    check_member(archive, data)
    with zipfile.ZipFile(archive) as z:
        return z.getinfo("adc.npy").compress_size


def test_the_spool_remembers_the_level_of_the_mount_that_died(tmp_path):
    """A spool made with -o compress=1 is finalized at level 1 by a plain `npz recover` and
    by a remount without -o compress; told otherwise, at the level given. Sizes tell the
    levels apart: the same spool deflated at 1 and at 9 differ."""
    data = frames(64, seed=2)  # 4 MiB
    size = {}
    ways = ("--compress=1", "--compress=9", "npz recover", "remount", "remount -o compress=9")
    for way in ways:
        archive = tmp_path / f"{len(size)}.npz"
        crashed_compress_mount(archive, tmp_path / "mnt", 1, data)
        if way.startswith("remount"):
            with mounted(archive, tmp_path / "mnt", *way.split()[1:]) as again:
                assert again.unmount() == 0, again.log()
            log = again.log()
        else:
            r = subprocess.run([NPZ_BIN, "recover", str(archive)] + ([] if way == "npz recover" else [way]),
                               capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
            log = r.stderr
        size[way] = deflated_size(archive, data)
        said = "deflated at level 1 (-o compress=1), as the spool records for the mount"
        assert (said in log) == (way in ("npz recover", "remount")), log
        if way == "remount -o compress=9":
            assert ("the mount that made these members asked for them deflated at level 1 "
                    "(-o compress=1); this mount's -o compress has every new member deflated "
                    "at level 9") in log, log
    assert size["--compress=1"] != size["--compress=9"]
    assert size["npz recover"] == size["remount"] == size["--compress=1"], size
    assert size["remount -o compress=9"] == size["--compress=9"], size


@pytest.mark.parametrize("recovery", ["npz recover", "remount"])
def test_damaged_deflated_chunks_are_deflated_again_not_copied_into_the_archive(tmp_path,
                                                                                recovery):
    """Zeroed bytes inside recorded chunks of a shadow (a bad disk, or blocks a power cut left
    unwritten): finalize must not copy them and then remove the spool's good bytes."""
    archive = tmp_path / "a.npz"
    np.savez(archive, old=np.arange(10))
    data = frames(64, seed=4)  # 4 MiB: 16 chunks
    m = start_daemon(archive, tmp_path / "mnt", "-o", "compress=4", "-o",
                     "frame=adc*:<i2:256x128")
    try:
        with open(m.path("adc.npy"), "wb") as f:
            f.write(data.tobytes())
        wait_for(lambda: shadow_chunks(archive) == 16, "every chunk recorded")
    finally:
        m.kill()
    shadow = spool_of(archive) / ".adc.npy.npzfs-deflate"
    assert shadow.stat().st_size > 4096 + 5 * 100000 + 16384
    assert shadow_chunks(archive) == 16
    with open(shadow, "r+b") as f:
        f.seek(4096 + 5 * 100000)  # inside a chunk some way in
        f.write(b"\0" * 16384)
    if recovery == "remount":
        with mounted(archive, tmp_path / "mnt") as again:
            assert again.unmount() == 0, again.log()
    else:
        r = subprocess.run([NPZ_BIN, "recover", str(archive)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    check_member(archive, data)


def test_npz_recover_store_overrides_the_recorded_level_and_a_failed_one_keeps_it(tmp_path):
    archive = tmp_path / "a.npz"
    data = frames(16, seed=3)
    crashed_compress_mount(archive, tmp_path / "mnt", 3, data)
    # A recover that fails (the name is in the archive already) changes nothing.
    clash = tmp_path / "clash.npz"
    np.savez(clash, adc=np.arange(3))
    saved = archive.read_bytes()
    archive.write_bytes(clash.read_bytes())
    r = subprocess.run([NPZ_BIN, "recover", str(archive), "--store"], capture_output=True,
                       text=True)
    assert r.returncode != 0 and "adc.npy" in r.stderr, r.stderr
    assert "compress 3\n" in (spool_of(archive) / ".npzfs-lock").read_text()
    archive.write_bytes(saved)
    r = subprocess.run([NPZ_BIN, "recover", str(archive), "--store"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    with zipfile.ZipFile(archive) as z:
        assert z.getinfo("adc.npy").compress_type == zipfile.ZIP_STORED
    with np.load(archive) as z:
        np.testing.assert_array_equal(z["adc"], data)
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
