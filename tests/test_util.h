// Helpers shared by the unit tests: scratch directories and running numpy.
#pragma once

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

}  // namespace npzfs::testing
