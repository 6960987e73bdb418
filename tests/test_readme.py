"""The README's Usage section runs as written.

Every ```bash block under "## Usage" is executed, in order, by one bash in an empty
directory with the freshly built `npzfs` and `npz` first on PATH. The test also runs the C++
API example the README points to.
"""
import os
import re
import subprocess

import pytest

from conftest import IN_CI

ROOT = os.environ.get("NPZFS_SOURCE_ROOT", os.path.dirname(os.path.dirname(__file__)))
NPZFS_BIN = os.environ.get("NPZFS_BIN", os.path.join(ROOT, "build/fs/npzfs"))
NPZ_BIN = os.environ.get("NPZ_BIN", os.path.join(ROOT, "build/tools/npz"))


def usage_snippets():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = text.split("\n## Usage", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", section, flags=re.S)


def unmount_leftovers(directory):
    for line in open("/proc/self/mounts", encoding="utf-8"):
        target = line.split()[1]
        if target.startswith(directory + "/"):
            if subprocess.run(["fusermount3", "-u", target]).returncode != 0:
                subprocess.run(["fusermount3", "-u", "-z", target])


def test_readme_has_usage_snippets_for_the_mount_and_the_tool():
    snippets = usage_snippets()
    assert len(snippets) >= 2
    assert any("npzfs " in s for s in snippets)
    assert any("npz pack" in s for s in snippets)


def test_readme_usage_snippets_run_as_written(tmp_path):
    if not os.path.exists("/dev/fuse"):
        if IN_CI:
            pytest.fail("/dev/fuse is missing: mount tests cannot run in CI")
        pytest.skip("/dev/fuse is missing")
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join(
        [os.path.dirname(NPZFS_BIN), os.path.dirname(NPZ_BIN), env.get("PATH", "")])
    script = "set -euo pipefail\n" + "\n".join(usage_snippets())
    try:
        result = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=600)
    finally:
        unmount_leftovers(str(tmp_path))
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert os.path.exists(tmp_path / "tmp.npz")
    assert os.path.exists(tmp_path / "packed.npz")


def test_the_cpp_api_example_runs_the_numpywriter_sequence(tmp_path):
    example = os.path.join(os.path.dirname(NPZ_BIN), "api_example")
    result = subprocess.run([example, str(tmp_path)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert os.path.exists(tmp_path / "tmp.npz")
