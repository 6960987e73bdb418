"""Real-world mounts: read-only datasets, as a non-root user; `npz umount` that touches only
npzfs mounts and survives a dead daemon; missing archives; mount points; a log that is never
lost; frame= checked at mount; side files; statistics; finalize progress; ls -l answers.
"""
import errno
import fcntl
import io
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
import zipfile

import numpy as np
import pytest

from conftest import (NPZ_BIN, NPZFS_BIN, is_mounted, mounted, require_fuse, require_root,
                      run_with_stderr_on_a_terminal, start_daemon, tmpfs, wait_for_output)

PYTHON = os.environ.get("NPZFS_PYTHON", "/usr/bin/python3")
CREATE = ("-o", "create")


def npz(*args, user=None, env=None, timeout=300):
    """Runs `npz` (as `user` if given) and returns the CompletedProcess, text output."""
    full_env = dict(os.environ)
    full_env.pop("NPZ_PROGRESS", None)
    full_env.update(env or {})
    prefix = as_user(user) if user else []
    return subprocess.run([*prefix, NPZ_BIN, *map(str, args)], capture_output=True, text=True,
                          env=full_env, timeout=timeout)


def run_npzfs(*args, timeout=30, env=None, prefix=()):
    """Runs npzfs to completion: for calls expected to fail, or to daemonize. One that mounts
    in the foreground instead is killed at `timeout` and its mount (the last argument)
    removed, so a failing test leaves nothing mounted."""
    try:
        return subprocess.run([*prefix, NPZFS_BIN, *map(str, args)], capture_output=True,
                              text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        if args and is_mounted(args[-1]):
            subprocess.run(["fusermount3", "-u", "-z", str(args[-1])], capture_output=True)
        raise


def make_archive(path, **arrays):
    arrays = arrays or {"adc": np.arange(60, dtype="<i2").reshape(5, 12),
                        "tx": np.linspace(0, 1, 7, dtype="<f4")}
    np.savez(path, **arrays)
    return arrays


def side_files(directory):
    return sorted(n for n in os.listdir(directory) if ".npzfs-" in n)


# ------------------------------------------------------------------ a user that is not root


def as_user(user):
    return ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--"]


@pytest.fixture
def user():
    """A throwaway unprivileged user (removed at teardown); the tests run as root.

    libfuse opens /dev/fuse itself (fusermount3 only performs the mount), so the user needs
    read-write access to it. Debian makes it 0666; a container may make it 0600 root. Then the
    device is lent to the user's own group for the test and restored afterwards."""
    require_root("creating a user needs root")
    require_fuse()
    name = f"npzfs-t{os.getpid() % 100000}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    name], check=True, capture_output=True)
    dev = os.stat("/dev/fuse")
    lend = (dev.st_mode & 0o006) != 0o006
    try:
        if lend:
            os.chown("/dev/fuse", dev.st_uid, pwd.getpwnam(name).pw_gid)
            os.chmod("/dev/fuse", stat.S_IMODE(dev.st_mode) | 0o060)
        yield name
    finally:
        if lend:
            os.chown("/dev/fuse", dev.st_uid, dev.st_gid)
            os.chmod("/dev/fuse", stat.S_IMODE(dev.st_mode))
        subprocess.run(["userdel", "--force", name], capture_output=True)


@pytest.fixture
def shared_dir():
    """A scratch directory every user can traverse (pytest's tmp_path is private to root)."""
    d = tempfile.mkdtemp(prefix="npzfs-lifecycle-", dir="/tmp")
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        for line in open("/proc/self/mounts", encoding="utf-8").read().splitlines():
            target = line.split()[1]
            if target.startswith(d + "/"):
                subprocess.run(["fusermount3", "-u", "-z", target], capture_output=True)
                subprocess.run(["umount", "-l", target], capture_output=True)
        shutil.rmtree(d, ignore_errors=True)


def owned_dir(path, user):
    os.makedirs(path, exist_ok=True)
    pw = pwd.getpwnam(user)
    os.chown(path, pw.pw_uid, pw.pw_gid)
    return path


USER_CHECK = r"""
import errno, os, sys, numpy as np
mnt = sys.argv[1]
a = np.load(os.path.join(mnt, "adc.npy"), mmap_mode="r")
assert a.shape == (5, 12) and int(a[4, 11]) == 59, a.shape
results = []
for make in (lambda: open(os.path.join(mnt, "new.npy"), "wb").close(),
             lambda: os.mkdir(os.path.join(mnt, "newdir"))):
    try:
        make()
        results.append("created")
    except OSError as e:
        results.append(errno.errorcode[e.errno])
print(" ".join(sorted(set(results))))
"""


def check_as_user(user, mnt):
    r = subprocess.run([*as_user(user), PYTHON, "-c", USER_CHECK, mnt], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def serve_as_user(user, archive, mnt, *options):
    return start_daemon(archive, mnt, *options, prefix=as_user(user))


def test_a_dataset_directory_the_user_cannot_write_is_served_and_creates_fail_with_erofs(
        user, shared_dir):
    data = os.path.join(shared_dir, "data")
    os.makedirs(data)
    make_archive(os.path.join(data, "run.npz"))
    os.chmod(data, 0o555)
    mnt = owned_dir(os.path.join(shared_dir, "mnt"), user)
    # A spool elsewhere would not help: finalize must write the archive's directory. The
    # creates fail at once rather than at the unmount, after the frames were taken.
    elsewhere = owned_dir(os.path.join(shared_dir, "elsewhere"), user)
    for options in ((), ("-o", f"spool={elsewhere}/spool")):
        m = serve_as_user(user, os.path.join(data, "run.npz"), mnt, *options)
        try:
            assert check_as_user(user, mnt) == "EROFS"
            log = m.log()
            assert f"{data}/run.npz: its directory {data} is not writable" in log, log
            assert "-o ro" in log and log.count("new files cannot be created") == 1, log
            r = npz("umount", mnt, user=user)
            assert r.returncode == 0, r.stderr
        finally:
            m.unmount()
        assert m.returncode == 0, m.log()
        assert os.listdir(data) == ["run.npz"] and os.listdir(elsewhere) == []


def test_two_users_writing_one_group_writable_archive_each_need_a_spool_of_their_own(
        user, shared_dir):
    data = os.path.join(shared_dir, "data")
    os.makedirs(data)
    os.chmod(data, 0o777)
    archive = os.path.join(data, "grp.npz")
    make_archive(archive)
    os.chmod(archive, 0o666)
    root_mnt = os.path.join(shared_dir, "root_mnt")
    root = start_daemon(archive, root_mnt, "-o", "frame=r*:<i2:4")
    try:
        with open(os.path.join(root_mnt, "r.npy"), "wb") as f:
            f.write(np.arange(8, dtype="<i2").tobytes())  # root's spool now exists
        mnt = owned_dir(os.path.join(shared_dir, "mnt"), user)
        r = run_npzfs("-f", archive, mnt, prefix=as_user(user))
        assert r.returncode == 1, r.stderr
        assert "is the spool of uid 0 (root), whose writable mount is running" in r.stderr
        assert "-o spool=DIR of your own" in r.stderr and not is_mounted(mnt)
        m = serve_as_user(user, archive, mnt, "-o", "ro")
        try:
            assert "spool of a writable mount that is running" in m.log(), m.log()
        finally:
            m.unmount()
        own = owned_dir(os.path.join(shared_dir, "own"), user)
        m = serve_as_user(user, archive, mnt, "-o", f"spool={own}/spool,frame=u*:<i2:4")
        try:
            check = f"open('{mnt}/u.npy', 'wb').write(bytes(range(16)))"
            subprocess.run([*as_user(user), PYTHON, "-c", check], check=True, timeout=60)
        finally:
            assert m.unmount() == 0, m.log()
    finally:
        assert root.unmount() == 0, root.log()
    with np.load(archive) as z:
        assert sorted(z.files) == ["adc", "r", "tx", "u"]
        assert z["u"].shape == (2, 4) and z["r"].shape == (2, 4)


def test_npz_umount_of_another_users_mount_says_whose_it_is_and_what_to_do(user, shared_dir):
    make_archive(os.path.join(shared_dir, "run.npz"))
    os.chmod(os.path.join(shared_dir, "run.npz"), 0o644)
    mnt = owned_dir(os.path.join(shared_dir, "mnt"), user)
    m = serve_as_user(user, os.path.join(shared_dir, "run.npz"), mnt, "-o", "ro")
    try:
        # Root: the daemon answers no one else; the user's own npz umount works.
        r = npz("umount", mnt, timeout=60)
        assert r.returncode == 1, r.stderr
        assert f"mounted by uid {pwd.getpwnam(user).pw_uid} ({user})" in r.stderr, r.stderr
        assert f"'umount {mnt}'" in r.stderr and is_mounted(mnt), r.stderr
        r = npz("umount", mnt, user=user, timeout=60)
        assert r.returncode == 0, r.stderr
    finally:
        m.unmount()
    root_mnt = os.path.join(shared_dir, "root_mnt")
    m = start_daemon(os.path.join(shared_dir, "run.npz"), root_mnt, "-o", "ro,allow_other")
    try:
        r = npz("umount", root_mnt, user=user, timeout=60)
        assert r.returncode == 1, r.stderr
        assert "mounted by uid 0 (root): only that user (or root) may unmount it" in r.stderr
        assert is_mounted(root_mnt)
    finally:
        m.unmount()


def test_a_read_only_bind_mount_is_served_with_and_without_o_ro(user, shared_dir):
    src = os.path.join(shared_dir, "src")
    os.makedirs(src)
    make_archive(os.path.join(src, "run.npz"))
    ro = os.path.join(shared_dir, "ro")
    os.makedirs(ro)
    subprocess.run(["mount", "--bind", src, ro], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", ro], check=True)
        for options in ((), ("-o", "ro")):
            mnt = owned_dir(os.path.join(shared_dir, "mnt"), user)
            m = serve_as_user(user, os.path.join(ro, "run.npz"), mnt, *options)
            try:
                assert check_as_user(user, mnt) == "EROFS"
                r = npz("umount", mnt, user=user)
                assert r.returncode == 0, (options, r.stderr)
            finally:
                m.unmount()
            assert m.returncode == 0, m.log()
            assert not is_mounted(mnt)
        assert os.listdir(src) == ["run.npz"]
    finally:
        subprocess.run(["umount", ro], capture_output=True)


def test_a_runtime_directory_another_user_made_for_us_is_named_with_its_owner_at_mount(
        user, shared_dir):
    pw = pwd.getpwnam(user)
    data = owned_dir(os.path.join(shared_dir, "data"), user)
    archive = os.path.join(data, "run.npz")
    make_archive(archive)
    os.chown(archive, pw.pw_uid, pw.pw_gid)
    tmp = os.path.join(shared_dir, "tmp")
    os.makedirs(tmp)
    os.chmod(tmp, 0o1777)
    squat = os.path.join(tmp, f"npzfs-{pw.pw_uid}")
    os.mkdir(squat, 0o700)  # root's: it would see the user's finalize results and locks
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    env["TMPDIR"] = tmp
    mnt = owned_dir(os.path.join(shared_dir, "mnt"), user)
    m = start_daemon(archive, mnt, prefix=as_user(user), env=env)
    try:
        log = m.log()
        assert (f"no runtime directory: $XDG_RUNTIME_DIR is not set; {squat}: belongs to uid 0 "
                "(root), not to us") in log, log
        assert "npz umount cannot report the finalize" in log, log
        # The mount works without it: a new member is finalized at the unmount.
        subprocess.run([*as_user(user), PYTHON, "-c",
                        "import numpy as np, sys; np.save(sys.argv[1], np.arange(3))",
                        os.path.join(mnt, "x.npy")], check=True, timeout=60)
    finally:
        m.unmount()
    assert m.returncode == 0, m.log()
    assert os.listdir(squat) == []
    with np.load(archive) as z:
        assert list(z["x"]) == [0, 1, 2]


def test_help_and_version_fail_when_stdout_cannot_be_written():
    for flag in ("--version", "--help"):
        with open("/dev/full", "wb") as full:
            r = subprocess.run([NPZFS_BIN, flag], stdout=full, stderr=subprocess.PIPE,
                               text=True, timeout=30)
        assert r.returncode == 1 and "stdout: write failed" in r.stderr, (flag, r.stderr)


def test_a_mount_point_that_cannot_be_made_says_why(tmp_path):
    require_fuse()
    src, ro = tmp_path / "src", tmp_path / "ro"
    src.mkdir()
    ro.mkdir()
    make_archive(src / "run.npz")
    subprocess.run(["mount", "--bind", src, ro], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", ro], check=True)
        r = subprocess.run([NPZFS_BIN, "-f", "-o", "ro", "run.npz"], cwd=ro,
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 1
        assert "mount point 'run': cannot create it: Read-only file system" in r.stderr, r.stderr
    finally:
        subprocess.run(["umount", ro], check=True)


def test_a_read_only_mount_leaves_no_side_file_and_umount_succeeds(tmp_path):
    require_fuse()
    make_archive(tmp_path / "run.npz")
    before = side_files(tmp_path)
    m = start_daemon(tmp_path / "run.npz", tmp_path / "mnt", "-o", "ro")
    try:
        assert os.getxattr(m.mnt, "user.npzfs.result") == b""
        r = npz("umount", m.mnt)
        assert r.returncode == 0, r.stderr
    finally:
        m.unmount()
    assert side_files(tmp_path) == before == []


def test_r_and_rw_make_npzfs_read_only_exactly_when_the_kernel_mount_is(tmp_path):
    """-r is libfuse's short form of -o ro: the kernel mount is read-only, so npzfs must be
    too (no lock, no spool, no finalize); of ro and rw, the last wins on both sides."""
    require_fuse()
    make_archive(tmp_path / "run.npz")
    for options, writable in ((("-r",), False), (("-o", "ro,rw"), True),
                              (("-o", "rw,ro"), False)):
        with mounted(tmp_path / "run.npz", tmp_path / "mnt", *options) as m:
            kernel_ro = bool(os.statvfs(m.mnt).f_flag & os.ST_RDONLY)
            assert kernel_ro == (not writable), options
            # A writable daemon publishes where its finalize result goes; a read-only one not.
            assert (os.getxattr(m.mnt, "user.npzfs.result") != b"") == writable, options


def test_the_result_file_is_kept_out_of_the_archive_directory_and_removed_once_read(tmp_path):
    require_fuse()
    make_archive(tmp_path / "run.npz")
    m = start_daemon(tmp_path / "run.npz", tmp_path / "mnt")
    try:
        result = os.getxattr(m.mnt, "user.npzfs.result").decode()
        assert os.path.dirname(result) != str(tmp_path)
        np.save(m.path("new.npy"), np.arange(3))
        r = npz("umount", m.mnt)
        assert r.returncode == 0, r.stderr
        assert not os.path.exists(result)
    finally:
        m.unmount()
    assert side_files(tmp_path) == []
    with np.load(tmp_path / "run.npz") as z:
        assert np.array_equal(z["new"], np.arange(3))


def test_a_second_writable_mount_of_the_same_archive_is_refused_at_mount(tmp_path):
    require_fuse()
    make_archive(tmp_path / "run.npz")
    with mounted(tmp_path / "run.npz", tmp_path / "mnt") as m:
        (tmp_path / "mnt2").mkdir()
        r = run_npzfs("-f", tmp_path / "run.npz", tmp_path / "mnt2")
        assert r.returncode != 0
        assert "already mounted for writing" in r.stderr and str(m.proc.pid) in r.stderr
        assert not is_mounted(tmp_path / "mnt2")
        # A read-only mount beside it is fine.
        with mounted(tmp_path / "run.npz", tmp_path / "mnt2", "-o", "ro") as ro:
            assert sorted(os.listdir(ro.mnt)) == ["adc.npy", "tx.npy"]


def test_a_mount_of_an_archive_that_a_running_mount_will_create_says_so(tmp_path):
    require_fuse()
    with mounted(tmp_path / "new.npz", tmp_path / "mnt", "-o", "create,frame=a*:<i2:4") as m:
        with open(m.path("a.npy"), "wb") as f:
            f.write(np.arange(8, dtype="<i2").tobytes())
        (tmp_path / "mnt2").mkdir()
        for options in ((), ("-o", "create")):
            r = run_npzfs("-f", *options, tmp_path / "new.npz", tmp_path / "mnt2")
            assert r.returncode != 0 and not is_mounted(tmp_path / "mnt2")
            # Not "mount with -o create to resume it, or run npz recover": neither can work.
            assert ("is in use by a writable mount that will create it" in r.stderr
                    or "already mounted for writing" in r.stderr), (options, r.stderr)
            assert "run npz recover" not in r.stderr and "mount with -o create" not in r.stderr, \
                r.stderr
    assert m.returncode == 0, m.log()


def runtime_env(tmp_path):
    """An environment whose runtime directory is private to the test: tmp_path/xdg/npzfs."""
    (tmp_path / "xdg").mkdir(mode=0o700)
    return dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path / "xdg"))


def test_a_killed_daemons_lock_and_progress_are_cleared_by_the_next_writable_mount(tmp_path):
    require_fuse()
    env = runtime_env(tmp_path)
    runtime = tmp_path / "xdg" / "npzfs"
    for name in ("killed.npz", "live.npz", "next.npz"):
        make_archive(tmp_path / name)
    mounts = [start_daemon(tmp_path / "killed.npz", tmp_path / "m1", env=env),
              start_daemon(tmp_path / "live.npz", tmp_path / "m2", env=env)]
    try:
        killed, live = (m.result_path[:-len(".result")] for m in mounts)
        assert os.path.dirname(killed) == str(runtime)
        mounts[0].kill()
        # What a daemon killed while finalizing leaves: its lock and its progress file.
        assert os.path.exists(killed + ".lock")
        with open(killed + ".progress", "w") as f:
            f.write("1 2\n")
        orphan = runtime / "gone.npz-0123456789abcdef.progress"  # a progress with no lock
        orphan.write_text("1 2\n")
        mounts.append(start_daemon(tmp_path / "next.npz", tmp_path / "m3", env=env))
        assert not os.path.exists(killed + ".lock")
        assert not os.path.exists(killed + ".progress")
        assert not orphan.exists()
        # The live daemon's lock stays, and still refuses a second writable mount.
        with open(live + ".lock") as f:
            assert f.read().split("\n")[:2] == [str(mounts[1].proc.pid),
                                                f"npz recover {tmp_path / 'live.npz'}"]
        r = run_npzfs("-f", tmp_path / "live.npz", tmp_path / "m1", env=env)
        assert r.returncode != 0 and "already mounted for writing" in r.stderr, r.stderr
    finally:
        for m in mounts:
            m.unmount()
    assert sorted(p.name for p in runtime.iterdir() if not p.name.endswith(".result")) == []


def test_a_killed_daemons_new_members_survive_a_move_of_the_archives_directory(tmp_path):
    require_fuse()
    (tmp_path / "day1").mkdir()
    arrays = make_archive(tmp_path / "day1" / "run.npz")
    m = start_daemon(tmp_path / "day1" / "run.npz", tmp_path / "mnt", "-o", "frame=f*:<i2:4")
    try:
        with open(tmp_path / "mnt" / "f.npy", "wb") as f:
            f.write(np.arange(40, dtype="<i2").tobytes())
            f.flush()
            os.fsync(f.fileno())
    finally:
        m.kill()
    os.rename(tmp_path / "day1", tmp_path / "archived")
    # The next mount at the new place resumes the spool that moved with the archive.
    m = start_daemon(tmp_path / "archived" / "run.npz", tmp_path / "mnt")
    try:
        log = m.log()
        assert f"the spool of {tmp_path / 'day1' / 'run.npz'}, which is " in log, log
        assert str(tmp_path / "archived" / "run.npz") in log, log
        assert np.load(tmp_path / "mnt" / "f.npy").shape == (10, 4)
    finally:
        m.unmount()
    assert m.returncode == 0, m.log()
    with np.load(tmp_path / "archived" / "run.npz") as z:
        assert sorted(z.files) == sorted([*arrays, "f"])
        np.testing.assert_array_equal(z["f"], np.arange(40, dtype="<i2").reshape(10, 4))


def test_the_log_file_a_daemon_keeps_in_the_runtime_directory_is_private(tmp_path):
    """Without syslog the daemonized log goes to the runtime directory (/run/npzfs, 0755,
    for root): it names members and paths, so only its owner may read it."""
    require_fuse()
    if os.path.exists("/dev/log"):
        pytest.skip("a syslog daemon listens on /dev/log: the log goes there")
    env = runtime_env(tmp_path)
    make_archive(tmp_path / "run.npz")
    (tmp_path / "mnt").mkdir()
    r = run_npzfs(tmp_path / "run.npz", tmp_path / "mnt", env=env)  # daemonizes
    try:
        assert r.returncode == 0, r.stderr
        logs = list((tmp_path / "xdg" / "npzfs").glob("run.npz-*.log"))
        assert len(logs) == 1 and str(logs[0]) in r.stderr, (logs, r.stderr)
        assert stat.S_IMODE(logs[0].stat().st_mode) == 0o600
    finally:
        r = npz("umount", tmp_path / "mnt", env=env, timeout=60)
        assert r.returncode == 0, r.stderr


def test_a_lock_held_for_a_moment_under_a_pid_that_does_not_run_delays_the_mount(tmp_path):
    require_fuse()
    env = runtime_env(tmp_path)
    make_archive(tmp_path / "run.npz")
    m = start_daemon(tmp_path / "run.npz", tmp_path / "mnt", env=env)
    lock = m.result_path[:-len(".result")] + ".lock"
    m.unmount()
    # Held as the stale-file cleanup of another daemon holds it while it looks, in a file
    # that names a pid above any pid_max: the mount waits for it instead of failing.
    holder = open(lock, "w")
    holder.write("999999999\n")
    holder.flush()
    fcntl.flock(holder, fcntl.LOCK_EX)
    release = threading.Timer(0.2, holder.close)
    release.start()
    try:
        m = start_daemon(tmp_path / "run.npz", tmp_path / "mnt", env=env)
        try:
            with open(lock) as f:
                assert f.readline().strip() == str(m.proc.pid)
        finally:
            assert m.unmount() == 0
    finally:
        release.join()


def test_npz_add_to_a_mounted_archive_says_the_mount_shows_the_member_after_a_remount(tmp_path):
    require_fuse()
    make_archive(tmp_path / "run.npz")
    np.save(tmp_path / "extra.npy", np.arange(5))
    r = npz("add", tmp_path / "run.npz", "early", tmp_path / "extra.npy")
    assert r.returncode == 0 and "mounted on" not in r.stderr, r.stderr
    with mounted(tmp_path / "run.npz", tmp_path / "mnt", "-o", "ro") as m:
        r = npz("add", tmp_path / "run.npz", "late", tmp_path / "extra.npy")
        assert r.returncode == 0, r.stderr
        assert f"is mounted on {os.path.realpath(m.mnt)}" in r.stderr, r.stderr
        assert "late.npy shows there after a remount" in r.stderr, r.stderr
    with mounted(tmp_path / "run.npz", tmp_path / "mnt", "-o", "ro") as m:
        assert {"early.npy", "late.npy"} <= set(os.listdir(m.mnt))
        assert np.array_equal(np.load(m.path("late.npy")), np.arange(5))
    # Mounted through a symlink, added through the real path (and the other way round): the
    # same archive file.
    os.symlink("run.npz", tmp_path / "link.npz")
    with mounted(tmp_path / "link.npz", tmp_path / "mnt", "-o", "ro") as m:
        r = npz("add", tmp_path / "run.npz", "via_real", tmp_path / "extra.npy")
        assert r.returncode == 0, r.stderr
        assert "via_real.npy shows there after a remount" in r.stderr, r.stderr
    with mounted(tmp_path / "run.npz", tmp_path / "mnt", "-o", "ro") as m:
        r = npz("add", tmp_path / "link.npz", "via_link", tmp_path / "extra.npy")
        assert r.returncode == 0, r.stderr
        assert "via_link.npy shows there after a remount" in r.stderr, r.stderr


# -------------------------------------------------------------------------- npz umount


def test_umount_refuses_a_tmpfs_and_leaves_it_mounted(tmp_path):
    with tmpfs(tmp_path / "t") as t:
        (t / "keep").write_text("x")
        r = npz("umount", t)
        assert r.returncode == 1
        assert "tmpfs" in r.stderr and "not an npzfs mount" in r.stderr, r.stderr
        assert is_mounted(t) and (t / "keep").read_text() == "x"


def test_umount_after_a_sigkill_clears_the_mount_and_prints_the_exact_recover_command(
        tmp_path):
    require_fuse()
    archive = tmp_path / "run.npz"
    make_archive(archive)

    def umount_after_sigkill(options, name, frames):
        """Writes `frames` 12-value frames to `name` through a mount with `options`, kills
        the daemon, and returns npz umount's stderr."""
        m = start_daemon(archive, tmp_path / "mnt", "-o", options)
        try:
            with open(m.path(name), "wb") as f:
                f.write(np.arange(12 * frames, dtype="<i2").tobytes())
            m.proc.send_signal(signal.SIGKILL)  # our own child
            m.proc.wait()
            r = npz("umount", m.mnt)
            assert r.returncode == 1
            assert not is_mounted(m.mnt)
            return r.stderr
        finally:
            m.unmount()

    stderr = umount_after_sigkill("frame=adc*:int16:12", "adc2.npy", 2)
    assert f"run `npz recover {archive}`, or" in stderr, stderr
    r = npz("recover", archive)
    assert r.returncode == 0, r.stderr
    with np.load(archive) as z:
        assert np.array_equal(z["adc2"], np.arange(24, dtype="<i2").reshape(2, 12))
    # With its own spool (a path that needs quoting) and -o compress: the command the daemon
    # recorded names both.
    spool = tmp_path / "my spool"
    stderr = umount_after_sigkill(f"frame=adc*:int16:12,compress=3,spool={spool}", "adc3.npy", 3)
    command = f"npz recover {archive} --spool '{spool}' --compress=3"
    assert f"run `{command}` (the chunks" in stderr, stderr
    r = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PATH=f"{os.path.dirname(NPZ_BIN)}:{os.environ['PATH']}"))
    assert r.returncode == 0, r.stderr
    with zipfile.ZipFile(archive) as z:
        assert z.getinfo("adc3.npy").compress_type == zipfile.ZIP_DEFLATED
    with np.load(archive) as z:
        assert np.array_equal(z["adc3"], np.arange(36, dtype="<i2").reshape(3, 12))


def test_umount_after_a_sigkill_of_a_read_only_mount_says_nothing_was_lost(tmp_path):
    require_fuse()
    make_archive(tmp_path / "run.npz")
    m = start_daemon(tmp_path / "run.npz", tmp_path / "mnt", "-o", "ro")
    m.proc.send_signal(signal.SIGKILL)  # our own child
    m.proc.wait()
    r = npz("umount", m.mnt)
    assert r.returncode == 1
    assert "read-only mount" in r.stderr and "nothing was lost" in r.stderr, r.stderr
    assert "recover" not in r.stderr
    assert not is_mounted(m.mnt)
    m.unmount()


def kill_writable_mount_after_a_member(archive, mnt, *options):
    """Mounts `archive` writable, writes two frames into new.npy durably, and kills the
    daemon (our own child): its spool keeps the member, its stale mount is cleared."""
    m = start_daemon(archive, mnt, "-o", "frame=new*:int16:12", *options)
    try:
        with open(m.path("new.npy"), "wb") as f:
            f.write(np.arange(24, dtype="<i2").tobytes())
            os.fsync(f.fileno())
    finally:
        m.kill()


def test_umount_of_a_dead_read_only_mount_names_a_crashed_spool_beside_the_archive(tmp_path):
    require_fuse()
    archive = tmp_path / "run.npz"
    make_archive(archive)
    kill_writable_mount_after_a_member(archive, tmp_path / "mnt")
    m = start_daemon(archive, tmp_path / "mnt", "-o", "ro")
    try:
        m.proc.send_signal(signal.SIGKILL)  # our own child
        m.proc.wait()
        r = npz("umount", m.mnt)
    finally:
        m.unmount()
    assert r.returncode == 1
    assert "nothing was lost" in r.stderr, r.stderr
    assert "holds new members of an earlier writable mount" in r.stderr, r.stderr
    assert f"run `npz recover {archive}`" in r.stderr, r.stderr
    assert npz("recover", archive).returncode == 0
    with np.load(archive) as z:
        assert np.array_equal(z["new"], np.arange(24, dtype="<i2").reshape(2, 12))


def test_a_mount_with_its_own_spool_warns_of_members_left_in_the_default_one(tmp_path):
    require_fuse()
    archive = tmp_path / "run.npz"
    make_archive(archive)
    kill_writable_mount_after_a_member(archive, tmp_path / "mnt")
    m = start_daemon(archive, tmp_path / "mnt", "-o", f"spool={tmp_path / 'other'}")
    try:
        assert not os.path.exists(m.path("new.npy"))
        log = m.log()
        assert "holds new members of an earlier mount" in log, log
        assert f"run `npz recover {archive}`" in log, log
    finally:
        m.unmount()
    assert npz("recover", archive).returncode == 0
    with np.load(archive) as z:
        assert np.array_equal(z["new"], np.arange(24, dtype="<i2").reshape(2, 12))


# ------------------------------------------------------------- archives and mount points


def test_a_missing_archive_is_an_error_with_its_absolute_path_unless_o_create(tmp_path):
    require_fuse()
    (tmp_path / "mnt").mkdir()
    r = run_npzfs("-f", "missing.npz", tmp_path / "mnt", env=None)
    assert r.returncode != 0
    assert os.path.join(os.path.realpath(os.getcwd()), "missing.npz") in r.stderr
    assert "-o create" in r.stderr
    r = run_npzfs("-f", "-o", "ro", tmp_path / "missing.npz", tmp_path / "mnt")
    assert r.returncode != 0 and str(tmp_path / "missing.npz") in r.stderr
    r = run_npzfs("-f", "-o", "ro,create", tmp_path / "missing.npz", tmp_path / "mnt")
    assert r.returncode == 2 and "contradict" in r.stderr
    assert not is_mounted(tmp_path / "mnt")
    with mounted(tmp_path / "missing.npz", tmp_path / "mnt", *CREATE) as m:
        np.save(m.path("x.npy"), np.arange(4))
    assert m.unmount() == 0
    with np.load(tmp_path / "missing.npz") as z:
        assert np.array_equal(z["x"], np.arange(4))


def test_o_spool_never_takes_a_directory_of_other_files_for_a_spool(tmp_path):
    require_fuse()
    make_archive(tmp_path / "run.npz")
    before = (tmp_path / "run.npz").read_bytes()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("notes")
    (tmp_path / "mnt").mkdir()
    for spool in (tmp_path / "mine", tmp_path):  # the archive's own directory too
        r = run_npzfs("-f", "-o", f"spool={spool}", tmp_path / "run.npz", tmp_path / "mnt")
        assert r.returncode == 1, r.stderr
        assert f"{spool}: not an npzfs spool" in r.stderr, r.stderr
        assert not is_mounted(tmp_path / "mnt")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "notes"
    assert sorted(os.listdir(tmp_path / "mine")) == ["notes.txt"]
    assert (tmp_path / "run.npz").read_bytes() == before
    # The archive's own directory, even empty (the archive made at unmount, -o create).
    (tmp_path / "d").mkdir()
    r = run_npzfs("-f", "-o", f"create,spool={tmp_path / 'd'}", tmp_path / "d" / "new.npz",
                  tmp_path / "mnt")
    assert r.returncode == 1 and "cannot be its spool" in r.stderr, r.stderr
    assert not is_mounted(tmp_path / "mnt") and os.listdir(tmp_path / "d") == []
    # An empty directory is a spool to be.
    (tmp_path / "empty").mkdir()
    with mounted(tmp_path / "run.npz", tmp_path / "mnt", "-o", f"spool={tmp_path / 'empty'}") as m:
        np.save(m.path("x.npy"), np.arange(4))
        assert os.path.exists(tmp_path / "empty" / "x.npy")
    assert m.unmount() == 0
    with np.load(tmp_path / "run.npz") as z:
        assert np.array_equal(z["x"], np.arange(4))


def test_a_spool_left_by_another_archives_daemon_is_refused_and_recovered_into_its_own(
        tmp_path):
    require_fuse()
    make_archive(tmp_path / "a.npz")
    make_archive(tmp_path / "b.npz")
    spool = tmp_path / "spool"
    m = start_daemon(tmp_path / "a.npz", tmp_path / "ma", "-o", f"spool={spool}")
    (tmp_path / "ma" / "for_a.txt").write_bytes(b"A")
    m.kill()  # a.npz's new member waits in the spool
    (tmp_path / "mb").mkdir()
    r = run_npzfs("-f", "-o", f"spool={spool}", tmp_path / "b.npz", tmp_path / "mb")
    assert r.returncode == 1, r.stderr
    assert f"the spool of {tmp_path / 'a.npz'}, not of {tmp_path / 'b.npz'}" in r.stderr
    assert not is_mounted(tmp_path / "mb")
    r = npz("recover", tmp_path / "b.npz", "--spool", spool)
    assert r.returncode == 1 and "the spool of" in r.stderr, r.stderr
    r = npz("recover", tmp_path / "a.npz", "--spool", spool)
    assert r.returncode == 0, r.stderr
    with zipfile.ZipFile(tmp_path / "a.npz") as z:
        assert z.read("for_a.txt") == b"A"
    with zipfile.ZipFile(tmp_path / "b.npz") as z:
        assert "for_a.txt" not in z.namelist()


def test_an_index_directory_that_is_missing_or_no_directory_is_refused_at_mount(tmp_path):
    require_fuse()
    make_archive(tmp_path / "run.npz")
    (tmp_path / "mnt").mkdir()
    (tmp_path / "file").touch()
    for given, cause in ((tmp_path / "nope", "No such file"), (tmp_path / "file", "Not a dir")):
        try:
            # Without -f: a daemon that mounted anyway must not hold the test up.
            r = run_npzfs("-o", f"index={given}", tmp_path / "run.npz", tmp_path / "mnt")
            assert r.returncode == 1, r.stderr
            assert f"{given}: -o index={given} needs a directory" in r.stderr, r.stderr
            assert cause in r.stderr, r.stderr
        finally:
            if is_mounted(tmp_path / "mnt"):
                subprocess.run(["fusermount3", "-u", "-z", str(tmp_path / "mnt")])
        assert not is_mounted(tmp_path / "mnt")


def test_a_spool_or_index_inside_the_mount_point_is_refused_rather_than_hanging(tmp_path):
    require_fuse()
    make_archive(tmp_path / "run.npz")
    (tmp_path / "mnt").mkdir()
    for option, named in [(f"spool={tmp_path / 'mnt' / 'sp'}", "-o spool="),
                          (f"index={tmp_path / 'mnt' / 'idx'}", "-o index=")]:
        r = run_npzfs("-f", "-o", option, tmp_path / "run.npz", tmp_path / "mnt")
        assert r.returncode == 1, r.stderr
        assert named in r.stderr and f"inside the mount point {tmp_path / 'mnt'}" in r.stderr
        assert not is_mounted(tmp_path / "mnt")
    # The mount point seen through a bind mount is the same directory.
    (tmp_path / "view").mkdir()
    subprocess.run(["mount", "--bind", tmp_path, tmp_path / "view"], check=True)
    try:
        r = run_npzfs("-f", "-o", f"spool={tmp_path / 'view' / 'mnt' / 'sp'}",
                      tmp_path / "run.npz", tmp_path / "mnt")
    finally:
        subprocess.run(["umount", tmp_path / "view"], check=True)
    assert r.returncode == 1 and "inside the mount point" in r.stderr, r.stderr
    assert not is_mounted(tmp_path / "mnt")
    (tmp_path / "view").rmdir()
    # A writable mount over the archive's own directory: the spool next to the archive.
    r = run_npzfs("-f", "-o", "nonempty", tmp_path / "run.npz", tmp_path)
    assert r.returncode == 1 and "the spool" in r.stderr and "inside the mount point" in r.stderr
    assert not is_mounted(tmp_path)
    # Read only, it is served, and its index goes to the runtime directory instead.
    with mounted(tmp_path / "run.npz", tmp_path, "-o", "ro,nonempty") as m:
        assert np.array_equal(np.load(os.path.join(str(tmp_path), "adc.npy")),
                              np.arange(60, dtype="<i2").reshape(5, 12))
    assert m.unmount() == 0
    assert sorted(os.listdir(tmp_path)) == ["mnt", "run.npz"]


def test_sigterm_during_finalize_lets_the_finalize_complete(tmp_path):
    # A shutdown sends SIGTERM to every process, also to a daemon still finalizing.
    require_fuse()
    make_archive(tmp_path / "run.npz")
    frames = np.random.default_rng(3).integers(0, 1 << 16, (96, 1024, 512), dtype="<u2")
    m = start_daemon(tmp_path / "run.npz", tmp_path / "mnt", "-o", "compress=9")
    try:
        np.save(m.path("big.npy"), frames)  # 96 MiB, faster than the background deflater
        subprocess.run(["fusermount3", "-u", m.mnt], check=True, timeout=60)
        deadline = time.monotonic() + 60
        while "finalize: 0 of 96 MiB" not in m.log():
            assert m.proc.poll() is None, "finished before the signal:\n" + m.log()
            assert time.monotonic() < deadline, m.log()
            time.sleep(0.005)
        m.proc.send_signal(signal.SIGTERM)
    finally:
        assert m.unmount() == 0, m.log()
    assert "SIGTERM arrived during finalize; the finalize was completed first" in m.log()
    with np.load(tmp_path / "run.npz") as z:
        assert np.array_equal(z["big"], frames)
    assert sorted(os.listdir(tmp_path)) == ["mnt", "run.npz"]


def test_a_mount_point_that_is_already_mounted_is_refused(tmp_path):
    require_fuse()
    make_archive(tmp_path / "run.npz")
    with mounted(tmp_path / "run.npz", tmp_path / "mnt", "-o", "ro"):
        r = run_npzfs("-f", "-o", "ro", tmp_path / "run.npz", tmp_path / "mnt")
        assert r.returncode != 0
        assert "already a mount point" in r.stderr and "fuse.npzfs" in r.stderr, r.stderr
        lines = [l for l in open("/proc/self/mounts") if l.split()[1] == str(tmp_path / "mnt")]
        assert len(lines) == 1, lines


def test_a_non_empty_mount_point_is_refused_unless_o_nonempty(tmp_path):
    require_fuse()
    make_archive(tmp_path / "run.npz")
    (tmp_path / "mnt").mkdir()
    (tmp_path / "mnt" / "precious.txt").write_text("hidden?")
    r = run_npzfs("-f", "-o", "ro", tmp_path / "run.npz", tmp_path / "mnt")
    assert r.returncode != 0 and "not empty" in r.stderr and "-o nonempty" in r.stderr
    with mounted(tmp_path / "run.npz", tmp_path / "mnt", "-o", "ro,nonempty") as m:
        assert sorted(os.listdir(m.mnt)) == ["adc.npy", "tx.npy"]
    assert (tmp_path / "mnt" / "precious.txt").read_text() == "hidden?"


# ------------------------------------------------------------------------------- the log


def daemonize(archive, mnt, *options, env=None):
    """Starts npzfs without -f (it daemonizes); returns its CompletedProcess."""
    require_fuse()
    os.makedirs(mnt, exist_ok=True)
    return subprocess.run([NPZFS_BIN, *options, str(archive), str(mnt)], capture_output=True,
                          text=True, timeout=60, env=env)


def without_syslog(cmd):
    """`cmd` in a mount namespace where /dev/log accepts no connection."""
    if not os.path.exists("/dev/log"):
        return cmd
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount --bind /dev/null /dev/log && exec "$@"', "sh", *cmd]


def test_without_syslog_a_daemon_logs_to_a_file_whose_path_it_prints(tmp_path):
    require_fuse()
    make_archive(tmp_path / "run.npz")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(without_syslog([NPZFS_BIN, str(tmp_path / "run.npz"), str(mnt)]),
                       capture_output=True, text=True, timeout=60)
    try:
        assert r.returncode == 0, r.stderr
        assert "the log goes to " in r.stderr, r.stderr
        log = r.stderr.split("the log goes to ", 1)[1].split()[0]
        np.save(mnt / "x.npy", np.arange(3))
        u = npz("umount", mnt)
        assert u.returncode == 0, u.stderr
        text = open(log).read()
        assert "mounted " + str(tmp_path / "run.npz") in text
        assert "new member x.npy" in text and "finalized 1 new member(s)" in text
    finally:
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)])


def test_a_newline_in_a_member_name_cannot_forge_a_log_line(tmp_path):
    require_fuse()
    make_archive(tmp_path / "run.npz")
    log = tmp_path / "log.txt"
    name = "bad\nnpzfs: error: forged line\x1b[2J.npy"
    with mounted(tmp_path / "run.npz", tmp_path / "mnt", "-o", f"log={log}") as m:
        with pytest.raises(OSError):
            with open(m.path(name), "wb") as f:
                f.write(b"not a header")
    assert m.unmount() == 0
    for text in (log.read_text(), m.log()):
        assert "bad\\nnpzfs: error: forged line\\x1b[2J.npy" in text, text
        assert not any(line.startswith(("npzfs: error: forged", "error: forged"))
                       for line in text.splitlines()), text
        assert "\x1b" not in text


def test_o_log_file_q_and_v(tmp_path):
    require_fuse()
    make_archive(tmp_path / "run.npz")
    for flag, has_info, has_debug in (("-q", False, False), (None, True, False),
                                      ("-v", True, True)):
        log = tmp_path / f"log{flag}.txt"
        options = ["-o", f"log={log}"] + ([flag] if flag else [])
        with mounted(tmp_path / "run.npz", tmp_path / "mnt", *options) as m:
            open(m.path("adc.npy"), "rb").read()
            with pytest.raises(OSError):
                with open(m.path("nolayout.npy"), "wb") as f:
                    f.write(b"not a header")
        assert m.unmount() == 0
        text = log.read_text()
        assert ("mounted " in text) == has_info, (flag, text)
        assert ("open adc.npy" in text) == has_debug, (flag, text)
        assert "no frame layout" in text  # errors are always logged
        first = text.splitlines()[0]
        assert first[:4].isdigit() and "npzfs[" in first, first  # a timestamp and the pid


# ----------------------------------------------------------------------- frame= at mount


@pytest.mark.parametrize("option,needle", [
    ("frame=adc*:int16:4x0", "'0'"),
    ("frame=adc*:int16:4x-2", "'-2'"),
    ("frame=adc*:i9:4", "i9"),
    ("frame=adc*:float33:4", "float33"),
    ("frame=adc*:|O:4", "pickle"),
    ("frame=adc*:<i2:4,5", "separated by 'x'"),
    ("frame=adc*:int16:99999999999x99999999999", "SHAPE: shape"),  # not the dtype's fault
])
def test_a_bad_frame_option_is_refused_at_mount(tmp_path, option, needle):
    require_fuse()
    (tmp_path / "mnt").mkdir()
    r = run_npzfs("-f", "-o", option, *CREATE, tmp_path / "run.npz", tmp_path / "mnt")
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr, r.stderr
    assert not is_mounted(tmp_path / "mnt")


@pytest.mark.parametrize("option", [["-o", "bogusopt"], ["--bogus"], ["-x"]])
def test_an_option_neither_npzfs_nor_fuse_knows_is_a_usage_error(tmp_path, option):
    require_fuse()
    (tmp_path / "mnt").mkdir()
    r = run_npzfs("-f", *option, *CREATE, tmp_path / "run.npz", tmp_path / "mnt")
    assert r.returncode == 2, r.stderr
    assert "npzfs --help" in r.stderr, r.stderr
    assert not is_mounted(tmp_path / "mnt")


def test_frame_accepts_numpy_dtype_names(tmp_path):
    require_fuse()
    with mounted(tmp_path / "run.npz", tmp_path / "mnt", *CREATE, "-o",
                 "frame=adc*:float32:2x3,frame=cnt*:uint8:4") as m:
        with open(m.path("adc.npy"), "wb") as f:
            f.write(np.arange(12, dtype="<f4").tobytes())
        with open(m.path("cnt.npy"), "wb") as f:
            f.write(bytes(range(8)))
        assert np.load(m.path("adc.npy")).dtype == np.dtype("<f4")
        assert os.getxattr(m.path("cnt.npy"), "user.npy.descr") == b"|u1"
    assert m.unmount() == 0
    with np.load(tmp_path / "run.npz") as z:
        assert z["adc"].shape == (2, 2, 3) and z["cnt"].shape == (2, 4)


# ---------------------------------------------------------------- xattrs and statistics


def test_the_stats_xattr_is_json_and_counts_reads_and_writes(tmp_path):
    require_fuse()
    rng = np.random.default_rng(2)
    np.savez_compressed(tmp_path / "run.npz", big=rng.integers(0, 9, (64, 4096), dtype="<i2"))
    with mounted(tmp_path / "run.npz", tmp_path / "mnt", "-o", "frame=adc*:int16:8") as m:
        before = json.loads(os.getxattr(m.mnt, "user.npzfs.stats"))
        for key in ("requests", "bytes_served", "spans_inflated", "cache_hits", "cache_misses",
                    "members_being_written", "frames_written"):
            assert isinstance(before[key], int), key
        data = open(m.path("big.npy"), "rb").read()
        fd = os.open(m.path("adc.npy"), os.O_WRONLY | os.O_CREAT)
        try:
            os.write(fd, np.arange(40, dtype="<i2").tobytes())
            during = json.loads(os.getxattr(m.mnt, "user.npzfs.stats"))
        finally:
            os.close(fd)
        # The kernel sends the release of a closed file after close(2) returns: wait for it.
        deadline = time.monotonic() + 30
        while True:
            after = json.loads(os.getxattr(m.mnt, "user.npzfs.stats"))
            if after["members_being_written"] == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.01)
    assert after["bytes_served"] - before["bytes_served"] >= len(data)
    assert after["requests"] > before["requests"]
    assert after["spans_inflated"] > before["spans_inflated"]
    assert during["members_being_written"] == 1 and after["members_being_written"] == 0
    assert after["frames_written"] == 5


def test_archived_npy_members_show_their_layout_as_read_only_xattrs(tmp_path):
    require_fuse()
    arrays = {"c": np.zeros((7, 3, 4), dtype=">f8"),
              "f": np.asfortranarray(np.zeros((3, 5), dtype="<u2"))}
    np.savez_compressed(tmp_path / "run.npz", **arrays)
    with zipfile.ZipFile(tmp_path / "run.npz", "a") as z:
        z.writestr("notes.txt", "not an array")
    with mounted(tmp_path / "run.npz", tmp_path / "mnt") as m:
        c, f = m.path("c.npy"), m.path("f.npy")
        assert os.getxattr(c, "user.npy.descr") == b">f8"
        assert os.getxattr(c, "user.npy.shape") == b"3,4"
        assert os.getxattr(c, "user.npy.fortran_order") == b"0"
        assert os.getxattr(f, "user.npy.shape") == b"3"
        assert os.getxattr(f, "user.npy.fortran_order") == b"1"
        assert sorted(os.listxattr(c)) == ["user.npy.descr", "user.npy.fortran_order",
                                           "user.npy.shape"]
        assert os.listxattr(m.path("notes.txt")) == []
        with pytest.raises(OSError) as e:
            os.setxattr(c, "user.npy.shape", b"4,3")
        assert e.value.errno == errno.EPERM
        with pytest.raises(OSError) as e:
            os.getxattr(c, "security.selinux")
        assert e.value.errno == errno.ENOTSUP  # ls -l then asks once per mount, not per file


# ------------------------------------------------------------------- finalize progress


def big_member_mount(tmp_path):
    archive = tmp_path / "run.npz"
    m = start_daemon(archive, tmp_path / "mnt", *CREATE, "-o", "compress")
    rng = np.random.default_rng(4)
    block = rng.integers(0, 200, size=(16 << 20) // 2, dtype="<i2")
    with open(m.path("big.npy"), "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<i2", "fortran_order": False, "shape": (4 * block.size,)})
        for _ in range(4):  # 64 MiB to deflate: a finalize that takes seconds
            f.write(block.tobytes())
    return m


def test_umount_prints_finalize_progress_lines_when_not_on_a_terminal(tmp_path):
    require_fuse()
    m = big_member_mount(tmp_path)
    try:
        r = npz("umount", m.mnt, env={"NPZ_PROGRESS_DELAY_MS": "0",
                                       "NPZ_PROGRESS_INTERVAL_MS": "0"}, timeout=600)
        assert r.returncode == 0, r.stderr
        lines = [l for l in r.stderr.splitlines() if "finalize run.npz" in l]
        assert lines and lines[0].startswith("npz: finalize run.npz: "), r.stderr
        assert "MiB" in lines[-1] and "%" in lines[-1]
    finally:
        m.unmount()


def test_umount_says_whom_a_finalize_waits_for_when_another_writer_holds_the_archive(
        tmp_path):
    require_fuse()
    make_archive(tmp_path / "run.npz")
    m = start_daemon(tmp_path / "run.npz", tmp_path / "mnt", "-o", "frame=new*:<i2:4")
    held = open(tmp_path / "run.npz", "rb")
    try:
        with open(m.path("new.npy"), "wb") as f:
            f.write(np.arange(8, dtype="<i2").tobytes())
        fcntl.flock(held, fcntl.LOCK_EX)  # another writer at work on the archive
        env = {**os.environ, "NPZ_PROGRESS_DELAY_MS": "0", "NPZ_PROGRESS_INTERVAL_MS": "0"}
        env.pop("NPZ_PROGRESS", None)
        with open(tmp_path / "err", "w+") as err:
            umount = subprocess.Popen([NPZ_BIN, "umount", m.mnt], stderr=err, env=env)
            try:
                said = wait_for_output(umount, tmp_path / "err", "waiting for another writer")
                assert f"run.npz: waiting for another writer to finish with it (pid {os.getpid()}"\
                    in said, said
                fcntl.flock(held, fcntl.LOCK_UN)
                assert umount.wait(timeout=60) == 0, (tmp_path / "err").read_text()
            finally:
                if umount.poll() is None:
                    umount.kill()
                    umount.wait()
    finally:
        held.close()
        m.unmount()
    with np.load(tmp_path / "run.npz") as z:
        assert z["new"].shape == (2, 4)


def test_umount_draws_a_finalize_bar_on_a_terminal(tmp_path):
    require_fuse()
    m = big_member_mount(tmp_path)
    try:
        code, text = run_with_stderr_on_a_terminal([NPZ_BIN, "umount", m.mnt],
                                                   {"NPZ_PROGRESS_DELAY_MS": "0"})
        assert code == 0
        assert "finalize run.npz" in text and "[" in text and "%" in text, text
    finally:
        m.unmount()


# ------------------------------------------------------------------ mount(8) and fstab


def test_mount_t_fuse_npzfs_and_an_fstab_line_mount_through_mount_fuse3(tmp_path):
    """The README's forms, run as written once npzfs is installed: mount(8) finds the
    program on its own PATH (/usr/local/bin first), so a private mount namespace puts the
    built binaries there."""
    require_fuse()
    require_root("mount(8) and a mount namespace need root")
    make_archive(tmp_path / "run.npz")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    os.symlink(NPZFS_BIN, bin_dir / "npzfs")
    os.symlink(NPZ_BIN, bin_dir / "npz")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    fstab = tmp_path / "fstab"
    fstab.write_text(f"{tmp_path / 'run.npz'}  {mnt}  fuse.npzfs  ro,noauto  0  0\n")
    script = f"""
set -e
mount --make-rprivate /
mount --bind {bin_dir} /usr/local/bin
mount -t fuse.npzfs -o ro {tmp_path / 'run.npz'} {mnt}
grep -q " {mnt} .* fuse.npzfs {tmp_path / 'run.npz'} " /proc/self/mountinfo
ls {mnt}
npz umount {mnt}
mount -T {fstab} {mnt}
ls {mnt}
npz umount {mnt}
mount.fuse3 {tmp_path / 'run.npz'} {mnt} -t npzfs -o ro
ls {mnt}
npz umount {mnt}
"""
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PATH": f"/usr/local/bin:{os.environ['PATH']}"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.split() == ["adc.npy", "tx.npy"] * 3, r.stdout


# ------------------------------------------------------------------ names in code page 437


def cp437_archive(path):
    """Members named without the UTF-8 flag in CP437 bytes, as old DOS and Windows tools write
    them (zipfile sets the flag for any non-ASCII name, so the bytes are patched in), beside
    one name that has the flag."""
    names = {b"\x84rger.npy": np.arange(3), b"caf\x82/\x9c5.npy": np.arange(4),
             b"\xe0\xe1\xe2.npy": np.arange(5)}
    placeholders = {}
    with zipfile.ZipFile(path, "w") as z:
        for i, (raw, array) in enumerate(names.items()):
            ascii_name = ("%0*d" % (len(raw) - 4, i)) + ".npy"
            if b"/" in raw:
                cut = raw.index(b"/")
                ascii_name = "a" * cut + "/" + "b" * (len(raw) - cut - 5) + ".npy"
            placeholders[ascii_name.encode()] = raw
            buf = io.BytesIO()
            np.save(buf, array)
            z.writestr(ascii_name, buf.getvalue())
        buf = io.BytesIO()
        np.save(buf, np.arange(6))
        z.writestr("naïve.npy", buf.getvalue())  # UTF-8, flag set
    blob = open(path, "rb").read()
    for ascii_name, raw in placeholders.items():
        assert blob.count(ascii_name) == 2  # local and central header
        blob = blob.replace(ascii_name, raw)
    open(path, "wb").write(blob)


def test_names_without_the_utf8_flag_are_read_as_cp437_like_numpy(tmp_path):
    require_fuse()
    archive = tmp_path / "dos.npz"
    cp437_archive(archive)
    with np.load(archive) as z:
        keys = {k: z[k] for k in z.files}
    assert "ärger" in keys and "café/£5" in keys and "αßΓ" in keys and "naïve" in keys
    with mounted(archive, tmp_path / "mnt", "-o", "ro") as m:
        listed = sorted(os.path.relpath(os.path.join(r, f), m.mnt)
                        for r, _, files in os.walk(m.mnt) for f in files)
        assert listed == sorted(k + ".npy" for k in keys)
        for key, array in keys.items():
            assert np.array_equal(np.load(m.path(key + ".npy")), array), key
    r = npz("ls", archive, "--json")
    assert r.returncode == 0, r.stderr
    assert sorted(e["name"] for e in json.loads(r.stdout)) == sorted(k + ".npy" for k in keys)


# ------------------------------------------------------- lazy unmount during reads (leaks)


SLOW_READER = r"""
import os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
print("open", flush=True)
offset = 0
while True:
    data = os.pread(fd, 1 << 20, offset)
    offset = 0 if not data else offset + len(data)
    time.sleep(0.01)
"""


def test_a_lazy_unmount_during_reads_leaks_nothing_and_the_daemon_exits_cleanly(tmp_path):
    """Run against an ASan/LSan daemon (NPZFS_BIN) this fails on any leaked FileHandle or
    Archive; against a plain build it still checks that the daemon exits 0 once the readers
    are gone."""
    require_fuse()
    rng = np.random.default_rng(9)
    np.savez_compressed(tmp_path / "run.npz",
                        big=rng.integers(0, 50, (48, 1 << 16), dtype="<i2"),
                        small=np.arange(10))
    # Keep what the environment sets (a sanitized CI run logs reports to files); make sure
    # leak checking is on.
    asan = ":".join(o for o in [os.environ.get("ASAN_OPTIONS", ""), "detect_leaks=1"] if o)
    env = {**os.environ, "ASAN_OPTIONS": asan}
    m = start_daemon(tmp_path / "run.npz", tmp_path / "mnt", "-o", "frame=adc*:<i2:16",
                     env=env)
    readers = []
    try:
        for member in ("big.npy", "small.npy", "big.npy"):
            p = subprocess.Popen([PYTHON, "-c", SLOW_READER, m.path(member)],
                                 stdout=subprocess.PIPE, text=True)
            readers.append(p)
            assert p.stdout.readline().strip() == "open"
        writer = os.open(m.path("adc.npy"), os.O_WRONLY | os.O_CREAT)  # a writer left open
        os.write(writer, np.arange(32, dtype="<i2").tobytes())
        time.sleep(0.3)  # reads in flight
        subprocess.run(["fusermount3", "-u", "-z", m.mnt], check=True)
        time.sleep(0.2)
        for p in readers:
            p.kill()  # our own children: their files close without a clean release
            p.wait()
        os.close(writer)
        code = m.proc.wait(timeout=120)
    finally:
        for p in readers:
            if p.poll() is None:
                p.kill()
                p.wait()
        m.unmount()
    log = m.log()
    assert "LeakSanitizer" not in log and "AddressSanitizer" not in log, log
    assert code == 0, log
    with np.load(tmp_path / "run.npz") as z:  # the writer's frames were finalized
        assert np.array_equal(z["adc"], np.arange(32, dtype="<i2").reshape(2, 16))


# ----------------------------------------------- what the archive writer offers at mount


def test_a_mount_undoes_an_append_a_killed_process_left_half_done(tmp_path):
    require_fuse()
    archive = tmp_path / "run.npz"
    make_archive(archive)
    before = archive.read_bytes()
    np.save(tmp_path / "new.npy", np.arange(1000))
    r = npz("add", archive, "new", tmp_path / "new.npy",
            env={"NPZFS_TEST_KILL_AT": "directory-written"})
    assert r.returncode == -signal.SIGKILL, r.stderr
    journal = tmp_path / ".run.npz.npzfs-journal"
    assert journal.exists()
    with mounted(archive, tmp_path / "mnt", "-o", "ro") as m:
        assert sorted(os.listdir(m.mnt)) == ["adc.npy", "tx.npy"]
    assert m.unmount() == 0
    assert not journal.exists() and archive.read_bytes() == before
    assert "interrupted append" in m.log(), m.log()


def test_a_writable_mount_removes_the_temp_file_of_a_killed_copy(tmp_path):
    require_fuse()
    archive = tmp_path / "run.npz"
    make_archive(archive)
    stale = tmp_path / ".run.npz.npzfs-tmp-Ab12Cd"  # what a SIGKILLed copy leaves
    stale.write_bytes(b"PK half an archive")
    with mounted(archive, tmp_path / "mnt", "-o", "ro"):
        assert stale.exists()  # a read-only mount writes nothing
    with mounted(archive, tmp_path / "mnt") as m:
        assert not stale.exists()
    assert m.unmount() == 0
    assert stale.name in m.log(), m.log()


@pytest.mark.parametrize("mode", ["inplace", "copy"])
def test_finalize_appends_in_place_by_default_and_by_copy_with_o_finalize_copy(tmp_path, mode):
    require_fuse()
    archive = tmp_path / "run.npz"
    arrays = make_archive(archive)
    inode = os.stat(archive).st_ino
    options = ["-o", "finalize=copy"] if mode == "copy" else []
    with mounted(archive, tmp_path / "mnt", *options) as m:
        np.save(m.path("new.npy"), np.arange(7))
    assert m.unmount() == 0, m.log()
    assert (os.stat(archive).st_ino == inode) == (mode == "inplace")
    with np.load(archive) as z:
        assert np.array_equal(z["new"], np.arange(7))
        assert all(np.array_equal(z[k], v) for k, v in arrays.items())


def test_a_daemon_in_the_background_finalizes_a_resumed_spool_with_compress(tmp_path):
    """Mounted without -f (as mount(8) and fstab do), the daemon forks after the mount. A
    spool left by a killed daemon is resumed before that, and with -o compress its background
    deflater once started there too: a thread that does not survive the fork, so finalize
    waited for it forever (or aborted joining it). The lock must name the daemon's own pid."""
    require_fuse()
    archive = tmp_path / "run.npz"
    make_archive(archive)
    frames = np.arange(3 << 20, dtype=np.int16).reshape(-1, 1024)  # 6 MiB, many chunks
    m = start_daemon(archive, tmp_path / "mnt", "-o", "compress")
    try:
        np.save(m.path("late.npy"), frames)
    finally:
        m.kill()  # the spool stays, with data the background deflater has not all done
    mnt = tmp_path / "mnt2"
    mnt.mkdir()
    r = run_npzfs("-o", "compress", archive, mnt)
    pid = None
    try:
        assert r.returncode == 0, r.stderr
        pid = int(os.getxattr(mnt, "user.npzfs.pid"))
        runtime = os.getxattr(mnt, "user.npzfs.result").decode()
        lock = runtime[: -len(".result")] + ".lock"
        with open(lock) as f:
            # Not the pid of the process that forked it; the recover command follows.
            assert f.read().split("\n")[:2] == [str(pid), f"npz recover {archive} --compress=6"]
        u = npz("umount", mnt, timeout=120)
        assert u.returncode == 0, u.stderr
        with np.load(archive) as z:
            assert np.array_equal(z["late"], frames)
        with zipfile.ZipFile(archive) as z:
            assert z.getinfo("late.npy").compress_type == zipfile.ZIP_DEFLATED
            assert z.testzip() is None
    finally:
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)])
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)  # the daemon we started, if it still runs
            except ProcessLookupError:
                pass
