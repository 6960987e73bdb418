"""Shared fixtures for the mount tests: start `npzfs -f`, wait for the mount, always unmount.

`mounted(archive, mnt, *options)` is a context manager. It starts the daemon in the
foreground as a subprocess of this test (only that PID is ever signalled), waits until the
mount point is live (failing early with the daemon's output if it died; 10 s timeout),
yields a DaemonMount, and on exit ALWAYS unmounts -- `fusermount3 -u`, then waits for the
daemon (finalize runs after the unmount), `fusermount3 -u -z` as a last resort -- even when
the test body failed. Without /dev/fuse the mount tests are skipped, except under CI where
a missing /dev/fuse is a failure.

Sanitized builds (ASan+UBSan, TSan) set NPZFS_SANITIZER_LOG_DIR: every sanitizer report of
a process a test starts (the daemon, npz, api_example) is written to a file there, and a new
file fails the test that was running, whatever the process's exit status (a test that
expects `npz verify` to fail would otherwise pass on an ASan abort).
"""
import contextlib
import os
import pty
import select
import signal
import subprocess
import tempfile
import time

import pytest

ROOT = os.environ.get("NPZFS_SOURCE_ROOT", os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NPZFS_BIN = os.environ.get("NPZFS_BIN", os.path.join(ROOT, "build/fs/npzfs"))
NPZ_BIN = os.environ.get("NPZ_BIN", os.path.join(ROOT, "build/tools/npz"))
MOUNT_TIMEOUT = 10.0
EXIT_TIMEOUT = 120.0  # finalize of the largest test archive


SANITIZER_LOG_DIR = os.environ.get("NPZFS_SANITIZER_LOG_DIR")
SANITIZER_OPTIONS = ("ASAN_OPTIONS", "UBSAN_OPTIONS", "TSAN_OPTIONS")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "large: needs several GiB of /tmp and minutes (deselect locally with "
        "-m 'not large'; always runs in CI)")
    config.addinivalue_line(
        "markers", "concurrent: several readers or writers share one daemon (also run "
        "under ThreadSanitizer in CI)")
    if SANITIZER_LOG_DIR:
        # One directory per pytest session, so that sessions never see each other's files.
        os.makedirs(SANITIZER_LOG_DIR, exist_ok=True)
        session_dir = tempfile.mkdtemp(prefix="session-", dir=SANITIZER_LOG_DIR)
        os.environ["NPZFS_SANITIZER_SESSION_DIR"] = session_dir
        for var in SANITIZER_OPTIONS:
            opts = [o for o in os.environ.get(var, "").split(":") if o]
            opts.append(f"log_path={session_dir}/{var.split('_')[0].lower()}")
            os.environ[var] = ":".join(opts)


def _sanitizer_reports():
    session_dir = os.environ.get("NPZFS_SANITIZER_SESSION_DIR")
    return set(os.listdir(session_dir)) if session_dir else set()


def _read_reports(names):
    session_dir = os.environ["NPZFS_SANITIZER_SESSION_DIR"]
    texts = []
    for name in sorted(names):
        with open(os.path.join(session_dir, name), errors="replace") as f:
            texts.append(f"--- {name}\n{f.read()}")
    return "\n".join(texts)


@pytest.fixture(autouse=True)
def no_sanitizer_reports():
    """Fails the test if a sanitized process it started wrote a report."""
    before = _sanitizer_reports()
    yield
    new = _sanitizer_reports() - before
    if new:
        pytest.fail("sanitizer report(s) from a process this test started:\n" +
                    _read_reports(new), pytrace=False)


def pytest_sessionfinish(session, exitstatus):
    """A report written after its test ended (a daemon that outlived it) still fails the run."""
    if not os.environ.get("NPZFS_SANITIZER_SESSION_DIR"):
        return
    names = _sanitizer_reports()
    if names:
        print("\nsanitizer reports in this session:\n" + _read_reports(names))
        session.exitstatus = 1


# Under CI ($CI set, and not "0", "false" or "no") every test must run: CI runs as root on a
# machine with /dev/fuse, so a test that cannot run there fails instead of being skipped.
IN_CI = os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def require_fuse():
    if not os.path.exists("/dev/fuse"):
        if IN_CI:
            pytest.fail("/dev/fuse is missing: the mount tests cannot run in CI")
        pytest.skip("/dev/fuse is missing")
    if not os.path.exists(NPZFS_BIN):
        pytest.fail(f"npzfs binary not found at {NPZFS_BIN} (set NPZFS_BIN)")


def require_root(why):
    """Skips a test that needs root (`why` says for what), except under CI, which runs as
    root: there a test that cannot run is a failure, never a silent skip."""
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail(f"{why}: CI must run as root")
        pytest.skip(why)


def wait_for_output(proc, path, text, timeout=60):
    """Polls the file `path` (where `proc` writes its output) until it holds `text`, and
    returns what it holds; fails if `proc` exits first or `timeout` s pass."""
    deadline = time.monotonic() + timeout
    while True:
        with open(path, encoding="utf-8", errors="replace") as f:
            said = f.read()
        if text in said:
            return said
        assert proc.poll() is None, said
        assert time.monotonic() < deadline, said
        time.sleep(0.05)


def is_mounted(mnt):
    """True if `mnt` is in the mount table (also for a dead 'transport not connected' mount,
    which os.path.ismount cannot stat)."""
    mnt = os.path.realpath(mnt)
    with open("/proc/self/mounts", encoding="utf-8") as f:
        return any(line.split()[1] == mnt for line in f)


class DaemonMount:
    """One running `npzfs -f` and its mount point."""

    def __init__(self, proc, mnt, log_file):
        self.proc = proc
        self.mnt = mnt
        self._log_file = log_file
        self.returncode = None
        self.result_path = ""  # where the daemon writes its finalize outcome ("": none)

    def path(self, *parts):
        return os.path.join(self.mnt, *parts)

    def log(self):
        """Everything the daemon wrote to stdout/stderr so far."""
        self._log_file.flush()
        self._log_file.seek(0)
        return self._log_file.read().decode(errors="replace")

    def unmount(self, timeout=EXIT_TIMEOUT):
        """fusermount3 -u (retrying while busy), wait for the daemon to exit (finalize runs
        after the unmount), lazy unmount as a last resort. Returns the daemon's exit code.
        Idempotent."""
        if self.returncode is not None:
            return self.returncode
        for _ in range(50):
            if not is_mounted(self.mnt) or self.proc.poll() is not None:
                break
            if subprocess.run(["fusermount3", "-u", self.mnt],
                              capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        try:
            self.returncode = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # our own child only
            self.returncode = self.proc.wait()
        if is_mounted(self.mnt):
            subprocess.run(["fusermount3", "-u", "-z", self.mnt], capture_output=True)
        return self.returncode

    def kill(self, sig=signal.SIGKILL):
        """Kills the daemon (our own child) and clears the dead mount it leaves."""
        if self.returncode is None:
            self.proc.send_signal(sig)
            self.returncode = self.proc.wait()
        if is_mounted(self.mnt):
            subprocess.run(["fusermount3", "-u", "-z", self.mnt], capture_output=True)
        return self.returncode


def start_daemon(archive, mnt, *options, timeout=MOUNT_TIMEOUT, prefix=(), env=None):
    """Starts the daemon and waits for the mount. Fails (after cleaning up) if it died.
    `prefix` runs it through another program that execs it (e.g. setpriv, to run as another
    user: the PID stays the daemon's)."""
    require_fuse()
    os.makedirs(mnt, exist_ok=True)
    log_file = tempfile.TemporaryFile()
    proc = subprocess.Popen([*prefix, NPZFS_BIN, "-f", *options, str(archive), str(mnt)],
                            stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, env=env)
    m = DaemonMount(proc, str(mnt), log_file)
    deadline = time.monotonic() + timeout
    # The mount table, not a stat: another user's FUSE mount refuses root's stat.
    while not is_mounted(mnt):
        if proc.poll() is not None:
            m.unmount()
            pytest.fail(f"npzfs exited with {proc.returncode} before mounting:\n{m.log()}")
        if time.monotonic() > deadline:
            m.kill()
            pytest.fail(f"npzfs did not mount {mnt} within {timeout} s:\n{m.log()}")
        time.sleep(0.02)
    try:
        m.result_path = os.getxattr(mnt, "user.npzfs.result").decode()
    except OSError:
        pass
    return m


@contextlib.contextmanager
def mounted(archive, mnt, *options):
    m = start_daemon(archive, mnt, *options)
    try:
        yield m
    finally:
        m.unmount()


@pytest.fixture
def mount_factory():
    """Starts mounts on demand; every one still running is unmounted at teardown."""
    started = []

    def start(archive, mnt, *options):
        m = start_daemon(archive, mnt, *options)
        started.append(m)
        return m

    yield start
    for m in reversed(started):
        m.unmount()


def run_with_stderr_on_a_terminal(argv, env):
    """Runs argv with stderr on a pseudo-terminal (stdout discarded); returns (exit code,
    everything drawn on the terminal)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=slave,
                            env={**os.environ, **env})
    os.close(slave)
    drawn = b""
    while True:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            drawn += chunk
        elif proc.poll() is not None:
            break
    proc.wait()
    os.close(master)
    return proc.returncode, drawn.decode("utf-8", "replace")


@contextlib.contextmanager
def tmpfs(directory, size="4m"):
    """A small tmpfs mounted at `directory` (we run as root); always unmounted."""
    require_root("mounting a tmpfs needs root")
    os.makedirs(directory, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs at {directory}: {r.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)])
