"""In-place append under an undo journal, end to end: `npz add` and the daemon's finalize
killed at random steps of the protocol (NPZFS_TEST_KILL_AT, see core/zip/append_journal.h),
then recovered by an npz command; afterwards the archive is byte-identical to before or
holds the new member, never anything else. Also `npz add --copy`, `npz recover` of a
journal, and foreign readers after many appends.

Run by meson through /usr/bin/python3 -m pytest with NPZ_BIN and NPZFS_BIN set.
"""
import io
import os
import random
import subprocess
import zipfile
import zlib

import numpy as np
import pytest

from conftest import NPZ_BIN, mounted

KILL_STEPS = ["journal-write", "journal-durable", "member-data", "directory-written",
              "archive-synced", "journal-removed"]


def npz(*args, env=None):
    full_env = dict(os.environ)
    full_env.pop("NPZFS_TEST_KILL_AT", None)
    full_env.update(env or {})
    r = subprocess.run([NPZ_BIN, *map(str, args)], capture_output=True, env=full_env,
                       timeout=300)
    r.stderr = r.stderr.decode("utf-8", "replace")
    return r


def journal(archive):
    return archive.parent / f".{archive.name}.npzfs-journal"


def ours(directory):
    """What a write may leave next to an archive: journals, temp files, spools (the sidecar
    index that npz frames saves is meant to stay)."""
    return sorted(n for n in os.listdir(directory)
                  if ".npzfs-" in n and not n.endswith(".npzfs-index"))


def npy_bytes(array):
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def run_dir_with_an_archive(tmp_path, i, rng):
    """run<i>/a.npz, a random archive: (directory, archive, its members, its bytes)."""
    d = tmp_path / f"run{i}"
    d.mkdir()
    archive = d / "a.npz"
    old_members = random_archive(archive, rng)
    return d, archive, old_members, archive.read_bytes()


def random_kill_step(rng, new_bytes):
    step = rng.choice(KILL_STEPS)
    if step == "member-data":
        step += ":%d" % rng.randint(1, max(1, new_bytes))
    return step


def random_archive(path, rng):
    """An archive of 1-4 .npy members, stored or deflated, written by zipfile like numpy."""
    members = {}
    with zipfile.ZipFile(path, "w") as z:
        for i in range(rng.randint(1, 4)):
            n = rng.choice([0, 1, 100, 5000, 300000, 1500000])
            data = npy_bytes(np.frombuffer(rng.randbytes(n - n % 2), dtype="<i2") // 64)
            method = rng.choice([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
            z.writestr(f"old{i}.npy", data, compress_type=method)
            members[f"old{i}.npy"] = data
    return members


def check_outcome(archive, before, old_members, new_name, new_bytes):
    """The archive is `before` byte for byte, or holds every old member unchanged plus the
    new one. Returns which ("old" or "new")."""
    now = archive.read_bytes()
    assert not journal(archive).exists()
    if now == before:
        return "old"
    with zipfile.ZipFile(archive) as z:
        assert z.testzip() is None
        assert z.namelist() == list(old_members) + [new_name], z.namelist()
        for name, data in old_members.items():
            assert z.read(name) == data, name
        assert z.read(new_name) == new_bytes
    return "new"


def recover_with_an_npz_command(archive, rng):
    """Undoes an interrupted append the way a user would meet it: any npz command."""
    how = rng.choice(["ls", "verify", "recover", "frames"])
    if how == "ls":
        r = npz("ls", archive)
    elif how == "verify":
        r = npz("verify", archive)
    elif how == "frames":
        r = npz("frames", f"{archive}:old0", 0, 0, "--raw")
    else:
        r = npz("recover", archive)
    if how == "recover" and r.returncode != 0:
        assert "no spool to recover" in r.stderr, r.stderr  # nothing was interrupted
    elif how in ("ls", "verify", "frames"):
        assert r.returncode == 0, (how, r.stderr)
    return how


def test_add_appends_in_place_and_writes_only_the_new_bytes(tmp_path):
    archive = tmp_path / "a.npz"
    np.savez(archive, big=np.arange(4 << 20, dtype="<i4"), small=np.arange(3))
    before = archive.read_bytes()
    inode = os.stat(archive).st_ino
    with zipfile.ZipFile(archive) as z:
        cd_offset = max(i.header_offset + 30 + len(i.filename) + 20 + i.compress_size
                        for i in z.infolist())
    np.save(tmp_path / "rx.npy", np.ones((10, 10)))
    r = npz("add", archive, "rx", tmp_path / "rx.npy")
    assert r.returncode == 0, r.stderr
    after = archive.read_bytes()
    assert os.stat(archive).st_ino == inode  # the same file, not a copy
    assert after[:cd_offset] == before[:cd_offset]  # old members never rewritten
    assert ours(tmp_path) == []
    with np.load(archive) as z:
        assert z["rx"].shape == (10, 10) and z["big"][-1] == (4 << 20) - 1


def test_add_copy_replaces_the_archive_by_a_renamed_copy(tmp_path):
    archive = tmp_path / "a.npz"
    np.savez(archive, x=np.arange(10))
    inode = os.stat(archive).st_ino
    np.save(tmp_path / "rx.npy", np.ones(5))
    r = npz("add", archive, "rx", tmp_path / "rx.npy", "--copy", "--compress")
    assert r.returncode == 0, r.stderr
    assert os.stat(archive).st_ino != inode
    with zipfile.ZipFile(archive) as z:
        assert z.namelist() == ["x.npy", "rx.npy"] and z.testzip() is None
    assert ours(tmp_path) == []


def test_a_hundred_kills_of_npz_add_at_random_steps_then_any_npz_command_recovers(tmp_path):
    rng = random.Random(20261129)
    outcomes = {"old": 0, "new": 0}
    killed = 0
    for i in range(100):
        d, archive, old_members, before = run_dir_with_an_archive(tmp_path, i, rng)
        new = npy_bytes(np.arange(rng.choice([0, 10, 100000, 700000, 2500000]), dtype="<u1"))
        (d / "new.npy").write_bytes(new)
        step = random_kill_step(rng, len(new))
        args = ["add", archive, "new", d / "new.npy", "--threads", rng.choice(["1", "2"])]
        if rng.random() < 0.5:
            args.append("--compress=%d" % rng.randint(0, 9))
        r = npz(*args, env={"NPZFS_TEST_KILL_AT": step})
        # A member too small to reach the kill point completes normally.
        assert r.returncode in (-9, 0), (step, r.returncode, r.stderr)
        how = recover_with_an_npz_command(archive, rng)
        outcome = check_outcome(archive, before, old_members, "new.npy", new)
        # Up to the journal's removal, recovery undoes the append (also a complete one whose
        # journal was still there); after it, the append stands.
        expected = "new" if step == "journal-removed" or r.returncode == 0 else "old"
        assert outcome == expected, (step, how)
        outcomes[outcome] += 1
        killed += r.returncode == -9
        assert ours(d) == [], (step, how)
    assert outcomes["old"] > 30 and outcomes["new"] > 10, outcomes
    assert killed >= 90, killed


def test_kills_during_the_daemons_finalize_then_a_remount_or_npz_recover_finishes_it(
        tmp_path, monkeypatch):
    rng = random.Random(7)
    killed = 0
    for i in range(100):
        d, archive, old_members, before = run_dir_with_an_archive(tmp_path, i, rng)
        frames = np.frombuffer(rng.randbytes(rng.choice([64, 4096, 1 << 20, 3 << 20])),
                               dtype="<u2").reshape(-1, 32)
        step = random_kill_step(rng, frames.nbytes)
        options = ["-o", "frame=adc*:<u2:32"] + (["-o", "compress"] if rng.random() < 0.5 else [])
        monkeypatch.setenv("NPZFS_TEST_KILL_AT", step)
        with mounted(archive, d / "mnt", *options) as m:
            monkeypatch.delenv("NPZFS_TEST_KILL_AT")
            with open(m.path("adc.npy"), "wb") as f:
                f.write(frames.tobytes())
            code = m.unmount()
        assert code in (-9, 0), (step, code, m.log())
        if code == -9:
            killed += 1
            # The spool survives until the archive is durable. The next mount, or npz
            # recover, undoes the interrupted append and adds the spool's members again.
            if rng.random() < 0.5:
                with mounted(archive, d / "mnt", *options) as again:
                    assert again.unmount() == 0, (step, again.log())
            else:
                r = npz("recover", archive)
                assert r.returncode == 0, (step, r.stderr)
        outcome = check_outcome(archive, before, old_members, "adc.npy", npy_bytes(frames))
        assert outcome == "new", step
        assert ours(d) == [], (step, ours(d))
    assert killed >= 90, killed


def test_recover_reports_an_interrupted_append_without_a_spool(tmp_path):
    archive = tmp_path / "a.npz"
    np.savez(archive, x=np.arange(10))
    before = archive.read_bytes()
    np.save(tmp_path / "y.npy", np.arange(100000))
    r = npz("add", archive, "y", tmp_path / "y.npy", env={"NPZFS_TEST_KILL_AT": "directory-written"})
    assert r.returncode == -9
    assert journal(archive).exists()
    r = npz("recover", archive)
    assert r.returncode == 0, r.stderr
    assert "restored to its state before an interrupted append" in r.stderr
    assert b"no spool to finalize" in r.stdout
    assert archive.read_bytes() == before and ours(tmp_path) == []
    r = npz("recover", archive)
    assert r.returncode == 1 and "no spool to recover" in r.stderr


def test_a_copy_taken_mid_append_is_restored_from_its_copied_journal_and_a_mismatch_fails(
        tmp_path):
    """A backup or a restored snapshot holds the archive as a killed append left it (not a
    zip) and its journal, on another inode: recover applies the journal if the bytes the
    append never touches match, and otherwise fails rather than exit 0 with a broken file."""
    import shutil
    archive = tmp_path / "a.npz"
    np.savez(archive, x=np.arange(100000))
    before = archive.read_bytes()
    np.save(tmp_path / "y.npy", np.arange(200000))
    r = npz("add", archive, "y", tmp_path / "y.npy",
            env={"NPZFS_TEST_KILL_AT": "member-data:100000"})
    assert r.returncode == -9, r.stderr
    for name, damage in (("copy", False), ("other", True)):
        d = tmp_path / name
        d.mkdir()
        shutil.copy2(archive, d / "a.npz")
        shutil.copy2(journal(archive), journal(d / "a.npz"))
        if damage:  # a byte the append never touched: not a copy of that archive
            with open(d / "a.npz", "r+b") as f:
                f.seek(100)
                b = f.read(1)
                f.seek(100)
                f.write(bytes([b[0] ^ 0xFF]))
        r = npz("recover", d / "a.npz")
        if damage:
            assert r.returncode == 1, r.stderr
            assert "not a zip archive" in r.stderr and "left as it is" in r.stderr, r.stderr
            assert not journal(d / "a.npz").exists()
            assert (d / ".a.npz.npzfs-journal.stale").exists()
        else:
            assert r.returncode == 0, r.stderr
            assert "a copy of it" in r.stderr, r.stderr
            assert (d / "a.npz").read_bytes() == before and ours(d) == []
    r = npz("recover", archive)  # the original is restored as ever
    assert r.returncode == 0 and archive.read_bytes() == before, r.stderr


@pytest.mark.parametrize("compress", [[], ["--compress"]])
def test_every_reader_accepts_the_archive_after_one_two_and_twenty_adds(tmp_path, compress):
    archive = tmp_path / "a.npz"
    np.savez_compressed(archive, first=np.arange(1000).reshape(10, 100))
    expected = {"first": np.arange(1000).reshape(10, 100)}
    for i in range(20):
        arr = (np.arange(i * 5000, dtype="<f4") * i).reshape(-1, 50)
        np.save(tmp_path / f"m{i}.npy", arr)
        expected[f"m{i}"] = arr
        r = npz("add", archive, f"m{i}", tmp_path / f"m{i}.npy", *compress)
        assert r.returncode == 0, r.stderr
        if i in (0, 1, 19):
            with np.load(archive) as z:
                assert sorted(z.files) == sorted(expected)
                for k, v in expected.items():
                    np.testing.assert_array_equal(z[k], v)
            with zipfile.ZipFile(archive) as z:
                assert z.testzip() is None
            for tool in (["unzip", "-tq"], ["zipinfo", "-v"]):
                t = subprocess.run(tool + [archive], capture_output=True)
                assert t.returncode == 0, (tool, t.stdout[-500:])
            v = npz("verify", archive)
            assert v.returncode == 0 and f"{i + 2} members OK" in v.stdout.decode(), v.stderr
    assert ours(tmp_path) == []


def test_recover_removes_the_temp_file_of_a_killed_copy(tmp_path):
    archive = tmp_path / "a.npz"
    np.savez(archive, x=np.arange(10))
    before = archive.read_bytes()
    np.save(tmp_path / "y.npy", np.arange(1 << 20))
    r = npz("add", archive, "y", tmp_path / "y.npy", "--copy",
            env={"NPZFS_TEST_KILL_AT": "member-data:1000000"})
    assert r.returncode == -9
    assert [n for n in ours(tmp_path) if ".npzfs-tmp-" in n]
    assert archive.read_bytes() == before  # a copy never touches the archive
    r = npz("recover", archive)
    assert r.returncode == 0, r.stderr
    assert "removed the temp file (" in r.stderr
    assert b"removed stale temp files; no spool to finalize" in r.stdout
    assert ours(tmp_path) == [] and archive.read_bytes() == before


def test_recover_removes_stale_temp_files_and_then_finalizes_the_spool(tmp_path):
    archive = tmp_path / "a.npz"
    np.savez(archive, x=np.arange(10))
    spool = tmp_path / ".a.npz.npzfs-spool"
    spool.mkdir()
    (spool / ".npzfs-lock").touch()  # made with every spool
    np.save(spool / "adc.npy", np.arange(12, dtype="<i2").reshape(3, 4))
    (tmp_path / ".a.npz.npzfs-tmp-Ab12Cd").write_bytes(b"half a copy")
    r = npz("recover", archive)
    assert r.returncode == 0, r.stderr
    assert ".a.npz.npzfs-tmp-Ab12Cd: removed the temp file (" in r.stderr
    assert ours(tmp_path) == []
    with np.load(archive) as z:
        np.testing.assert_array_equal(z["adc"], np.arange(12, dtype="<i2").reshape(3, 4))


@pytest.mark.parametrize("compress", [False, True])
def test_a_live_mount_keeps_serving_old_members_while_npz_add_and_zipfile_append(
        tmp_path, compress):
    archive = tmp_path / "run.npz"
    rng = np.random.default_rng(3)
    adc = (rng.normal(0, 300, size=(64, 4096))).astype("<i2")
    (np.savez_compressed if compress else np.savez)(archive, adc=adc)
    np.save(tmp_path / "calib.npy", np.arange(100.0))
    with mounted(archive, tmp_path / "mnt") as m:
        fd = os.open(m.path("adc.npy"), os.O_RDONLY)
        try:
            head = os.pread(fd, 4096, 0)
            r = npz("add", archive, "calib", tmp_path / "calib.npy")
            assert r.returncode == 0, r.stderr
            with zipfile.ZipFile(archive, "a") as z:  # Python's own append, in place too
                z.writestr("note.txt", "appended by zipfile")
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # the reads reach the daemon
            rest = os.pread(fd, 1 << 20, 4096)
        finally:
            os.close(fd)
        assert head + rest == npy_bytes(adc)
        served = np.load(m.path("adc.npy"), mmap_mode="r")
        assert np.array_equal(served, adc)
        del served
        assert sorted(os.listdir(m.mnt)) == ["adc.npy"]  # the new ones: after a remount
        np.save(m.path("frames.npy"), np.arange(5))  # finalized after the two appends
    assert m.unmount() == 0, m.log()
    assert "grew by an append" in m.log() and "changed while it was open" not in m.log()
    with zipfile.ZipFile(archive) as z:
        assert z.testzip() is None
        assert z.namelist() == ["adc.npy", "calib.npy", "note.txt", "frames.npy"]
    with np.load(archive) as z:
        assert np.array_equal(z["adc"], adc) and np.array_equal(z["frames"], np.arange(5))
    with mounted(archive, tmp_path / "mnt") as m:
        assert sorted(os.listdir(m.mnt)) == ["adc.npy", "calib.npy", "frames.npy", "note.txt"]
        assert np.array_equal(np.load(m.path("calib.npy")), np.arange(100.0))


@pytest.mark.parametrize("step", ["directory-written", "archive-synced"])
@pytest.mark.parametrize("how", ["recover", "remount"])
def test_a_zipfile_append_after_a_killed_finalize_is_kept_and_the_finalize_adds_nothing_twice(
        tmp_path, monkeypatch, step, how):
    archive = tmp_path / "a.npz"
    np.savez(archive, x=np.arange(100))
    adc = np.arange(3000, dtype="<i2").reshape(-1, 30)
    monkeypatch.setenv("NPZFS_TEST_KILL_AT", step)
    with mounted(archive, tmp_path / "mnt") as m:
        monkeypatch.delenv("NPZFS_TEST_KILL_AT")
        np.save(m.path("adc.npy"), adc)
        code = m.unmount()
    assert code == -9, (code, m.log())
    assert journal(archive).exists()
    # Another program appends after the crash, before any recovery: zipfile writes where
    # the directory it finds (the killed finalize's, complete) begins.
    with zipfile.ZipFile(archive, "a") as z:
        z.writestr("other.npy", npy_bytes(np.arange(10)))
    expected = ["x.npy", "adc.npy", "other.npy"]
    with zipfile.ZipFile(archive) as z:
        assert z.namelist() == expected
    if how == "recover":
        r = npz("recover", archive)
        assert r.returncode == 0, r.stderr
        log = r.stderr
    else:
        with mounted(archive, tmp_path / "mnt") as again:
            assert sorted(os.listdir(again.mnt)) == ["adc.npy", "other.npy", "x.npy"]
            assert again.unmount() == 0, again.log()
        log = again.log()
    assert "was appended to by another program after the interrupted append" in log, log
    assert "adc.npy is already there with the same bytes; not added again" in log, log
    with zipfile.ZipFile(archive) as z:
        assert z.namelist() == expected and z.testzip() is None
    with np.load(archive) as z:
        assert np.array_equal(z["adc"], adc) and np.array_equal(z["other"], np.arange(10))
    assert ours(tmp_path) == [f".{archive.name}.npzfs-journal.stale"]
