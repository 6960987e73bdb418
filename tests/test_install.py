"""What `meson install` gives a user: the two programs, their man pages (which render), the
C++ API as a shared and a static library with its public headers and npzfs.pc, and a
LICENSE. The API example is built against the installed tree with pkg-config and run.
"""
import json
import os
import shutil
import subprocess

import pytest

ROOT = os.environ.get("NPZFS_SOURCE_ROOT", os.path.dirname(os.path.dirname(__file__)))
NPZFS_BIN = os.environ.get("NPZFS_BIN", os.path.join(ROOT, "build/fs/npzfs"))
BUILD = os.environ.get("NPZFS_BUILD_ROOT",
                       os.path.dirname(os.path.dirname(os.path.abspath(NPZFS_BIN))))
PUBLIC_HEADERS = sorted(os.listdir(os.path.join(ROOT, "core", "include", "npzfs")))


@pytest.mark.parametrize("page", ["fs/npzfs.1", "tools/npz.1"])
def test_the_man_pages_render_without_warnings(page):
    env = {**os.environ, "MANWIDTH": "80", "MANPAGER": "cat", "LC_ALL": "C.UTF-8"}
    r = subprocess.run(["man", "--warnings", "-l", os.path.join(ROOT, page)],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", r.stderr
    for section in ("NAME", "SYNOPSIS", "OPTIONS" if "npzfs" in page else "COMMANDS",
                    "EXIT STATUS", "EXAMPLES"):
        assert section in r.stdout, section
    if "npzfs" in page:
        assert "EROFS" in r.stdout and "EBUSY" in r.stdout  # the append-only table
        assert "fuse.npzfs" in r.stdout  # the mount(8) and fstab forms


def test_the_license_is_the_mit_license_meson_declares():
    text = open(os.path.join(ROOT, "LICENSE"), encoding="utf-8").read()
    assert text.startswith("MIT License")
    assert "license : 'MIT'" in open(os.path.join(ROOT, "meson.build"), encoding="utf-8").read()


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """`meson install --destdir` of the build under test; returns (destdir, prefix)."""
    if shutil.which("meson") is None:
        pytest.fail("meson is not on PATH")
    dest = tmp_path_factory.mktemp("destdir")
    r = subprocess.run(["meson", "install", "-C", BUILD, "--destdir", str(dest), "--no-rebuild",
                        "--quiet"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    introspected = subprocess.run(["meson", "introspect", BUILD, "--buildoptions"],
                                  capture_output=True, text=True, check=True).stdout
    options = {o["name"]: o["value"] for o in json.loads(introspected)}
    return dest, options["prefix"], options["libdir"], options["includedir"], options["mandir"]


def build_compiler():
    """The build's C++ compiler, with its sanitizers: a sanitized libnpzfs links only into a
    program built with the same -fsanitize flags."""
    def introspect(what):
        return json.loads(subprocess.run(["meson", "introspect", BUILD, what],
                                         capture_output=True, text=True, check=True).stdout)

    options = {o["name"]: o["value"] for o in introspect("--buildoptions")}
    command = next(list(source["compiler"]) for target in introspect("--targets")
                   for source in target["target_sources"] if source.get("language") == "cpp")
    sanitize = options.get("b_sanitize", "none")
    if isinstance(sanitize, list):
        sanitize = ",".join(sanitize)
    if sanitize and sanitize != "none":
        command.append("-fsanitize=" + sanitize)
    return command


def under(dest, prefix, sub):
    """Where `sub` (an install directory, relative to the prefix or absolute) lands in dest."""
    return str(dest) + (sub if os.path.isabs(sub) else os.path.join(prefix, sub))


def test_meson_install_gives_programs_pages_library_headers_and_pkgconfig(installed):
    dest, prefix, libdir, includedir, mandir = installed
    for program in ("npzfs", "npz"):
        assert os.access(under(dest, prefix, os.path.join("bin", program)), os.X_OK), program
    for page in ("npzfs.1", "npz.1"):
        assert os.path.exists(under(dest, prefix, os.path.join(mandir, "man1", page))), page
    lib = under(dest, prefix, libdir)
    names = os.listdir(lib)
    assert "libnpzfs.a" in names and "libnpzfs.so" in names, names
    assert os.path.exists(os.path.join(lib, "pkgconfig", "npzfs.pc"))
    # Only the API's headers are public; the internals stay in the source tree.
    assert sorted(os.listdir(under(dest, prefix, os.path.join(includedir, "npzfs")))) == \
        PUBLIC_HEADERS


def test_the_api_example_builds_against_the_installed_tree_with_pkg_config(installed, tmp_path):
    dest, prefix, libdir, _, _ = installed
    lib = under(dest, prefix, libdir)
    env = {**os.environ, "PKG_CONFIG_PATH": os.path.join(lib, "pkgconfig"),
           "PKG_CONFIG_SYSROOT_DIR": str(dest)}
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "npzfs"], capture_output=True,
                           text=True, env=env, check=True).stdout.split()
    assert any(f.startswith("-I" + str(dest)) for f in flags), flags
    assert "-lnpzfs" in flags
    # A copy outside the source tree: only the installed headers can be found.
    source = tmp_path / "example.cc"
    shutil.copy(os.path.join(ROOT, "tools", "api_example.cc"), source)
    exe = tmp_path / "example"
    cxx = build_compiler()
    r = subprocess.run([*cxx, "-std=c++20", str(source), *flags, "-o", str(exe)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "shared"
    out.mkdir()
    r = subprocess.run([str(exe), str(out)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "LD_LIBRARY_PATH": lib})
    assert r.returncode == 0, r.stderr
    assert (out / "tmp.npz").exists()
    # The static library links with what `pkg-config --static` adds.
    static_flags = subprocess.run(["pkg-config", "--static", "--cflags", "--libs", "npzfs"],
                                  capture_output=True, text=True, env=env, check=True).stdout
    static_exe = tmp_path / "example-static"
    flags = static_flags.split()
    r = subprocess.run([*cxx, "-std=c++20", str(source), "-static-libstdc++",
                        *[f for f in flags if f.startswith("-I")],
                        os.path.join(lib, "libnpzfs.a"),
                        *[f for f in flags if not f.startswith("-I") and f != "-lnpzfs"],
                        "-o", str(static_exe)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "static"
    out.mkdir()
    r = subprocess.run([str(static_exe), str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
