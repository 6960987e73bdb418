// Helpers shared by the unit tests: scratch directories, running numpy, test data.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace npzfs::testing {

// A fresh directory under $TMPDIR (or /tmp), removed with its contents on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string Join(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// Runs `code` with /usr/bin/python3 (numpy available) and returns its stdout. The test
// fails (ADD_FAILURE) if the interpreter exits non-zero; stderr is passed through. The code
// can call one helper, defined before it runs:
//   central_records(data, name): the offsets in `data` (a zip archive's bytes) of the
//   central directory records named `name`, for tests that damage a field of one.
std::string RunPython(const std::string& code);

// The whole content of a file, or a test failure.
std::string ReadFileOrDie(const std::string& path);
void WriteFileOrDie(const std::string& path, const std::string& bytes);

// Whether the tests run under CI ($CI set, and not "", "0", "false" or "no"). CI runs as root
// on a machine that mounts tmpfs and FUSE: there every test must run.
bool InCi();

// Skips the test, saying `why`; under CI (InCi) fails it instead: a test CI cannot run is a
// failure there, never a silent skip. Returns from the test body, as GTEST_SKIP does.
#define NPZ_SKIP_UNLESS_CI(why)                                     \
  do {                                                              \
    if (::npzfs::testing::InCi()) FAIL() << (why) << " (under CI)"; \
    GTEST_SKIP() << (why);                                          \
  } while (0)

// A small tmpfs mounted at `dir` (made if missing), unmounted whatever happens (lazily if
// it is busy). Mounting needs root: check mounted(), and NPZ_SKIP_UNLESS_CI if not.
class SmallTmpfs {
 public:
  SmallTmpfs(const std::string& dir, const std::string& size);
  ~SmallTmpfs();
  SmallTmpfs(const SmallTmpfs&) = delete;
  SmallTmpfs& operator=(const SmallTmpfs&) = delete;
  bool mounted() const { return mounted_; }

 private:
  std::string dir_;
  bool mounted_ = false;
};

// `samples` int16 little-endian samples: a smooth signal plus noise, like an ADC recording
// (the same bytes for the same seed).
std::string RealisticInt16(size_t samples, uint32_t seed);

}  // namespace npzfs::testing
