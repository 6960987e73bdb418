#include "tests/test_util.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/mount.h>
#include <sys/wait.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

namespace npzfs::testing {

bool InCi() {
  const char* ci = std::getenv("CI");
  if (ci == nullptr) return false;
  const std::string v = ci;
  return !(v.empty() || v == "0" || v == "false" || v == "no");
}

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string pattern = std::string(base && *base ? base : "/tmp") + "/npzfs-test-XXXXXX";
  if (::mkdtemp(pattern.data()) == nullptr) {
    ADD_FAILURE() << "mkdtemp failed for " << pattern;
  }
  path_ = pattern;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::string RunPython(const std::string& code) {
  static const char kPrelude[] = R"PY(
def central_records(data, name):
    name = name.encode()
    i = data.find(b'PK\x01\x02')
    while i >= 0:
        n = int.from_bytes(data[i + 28:i + 30], 'little')
        if data[i + 46:i + 46 + n] == name:
            yield i
        i = data.find(b'PK\x01\x02', i + 4)
)PY";
  const char* py = std::getenv("NPZFS_PYTHON");
  TempDir dir;
  std::string script = dir.Join("script.py");
  WriteFileOrDie(script, kPrelude + code);
  std::string cmd = std::string(py && *py ? py : "/usr/bin/python3") + " " + script;
  FILE* pipe = ::popen(cmd.c_str(), "r");
  if (pipe == nullptr) {
    ADD_FAILURE() << "popen failed: " << cmd;
    return "";
  }
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, pipe)) > 0) out.append(buf, n);
  int status = ::pclose(pipe);
  if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    ADD_FAILURE() << "python failed (status " << status << ") running:\n" << code;
  }
  return out;
}

std::string ReadFileOrDie(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    ADD_FAILURE() << "cannot read " << path;
    return "";
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteFileOrDie(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) ADD_FAILURE() << "cannot write " << path;
}

std::string RealisticInt16(size_t samples, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> noise(0.0, 30.0);
  std::string out(samples * 2, '\0');
  for (size_t i = 0; i < samples; ++i) {
    auto v = static_cast<int16_t>(1000.0 * std::sin(static_cast<double>(i) / 500.0) + noise(rng));
    out[2 * i] = static_cast<char>(v & 0xff);
    out[2 * i + 1] = static_cast<char>((v >> 8) & 0xff);
  }
  return out;
}

SmallTmpfs::SmallTmpfs(const std::string& dir, const std::string& size) : dir_(dir) {
  std::filesystem::create_directories(dir_);
  mounted_ = ::mount("tmpfs", dir_.c_str(), "tmpfs", 0, ("size=" + size).c_str()) == 0;
}

SmallTmpfs::~SmallTmpfs() {
  if (mounted_ && ::umount2(dir_.c_str(), 0) != 0) ::umount2(dir_.c_str(), MNT_DETACH);
}

}  // namespace npzfs::testing
