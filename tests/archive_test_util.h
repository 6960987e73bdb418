// Helpers for the tests that write archives (archive_writer_test, append_test): building
// NewMembers, listing directories, running the readers users have over an archive, and a
// small tmpfs for ENOSPC.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "npzfs/archive_writer.h"
#include "npzfs/file_util.h"
#include "npzfs/zip_directory.h"

namespace npzfs::testing {

Result<ZipDirectory> ReadDir(const std::string& path);
// Names in `dir` (without "." and ".."), sorted.
std::vector<std::string> ListDir(const std::string& dir);
uint32_t Crc(const std::string& bytes);

NewMember FromBytes(const std::string& name, std::string bytes);
// A member whose one piece is the whole of `file`, open at `fd`.
NewMember FromFile(const std::string& name, const UniqueFd& fd, const std::string& file);

// Runs the users' readers over `archive`: every `.npy` member equals `<dir>/<key>.npy`
// when that file exists, zipfile.testzip() finds no bad CRC, `unzip -tq` and `zipinfo -v`
// pass. Returns the member names in order as zipfile lists them, comma-separated, with a
// newline.
std::string VerifyWithPython(const std::string& archive, const std::string& expected_dir);
// libzip opens `archive` with its consistency check and reads every member completely
// (members larger than `max_member_bytes` are only stat'ed); returns the member count (-1
// if it cannot open it).
int64_t ReadAllWithLibzip(const std::string& archive, uint64_t max_member_bytes = UINT64_MAX);

// A tmpfs mounted for one test and always unmounted, even when the test fails. `options`:
// "size=4m", or "ro" for a read-only one.
class ScopedTmpfs {
 public:
  ScopedTmpfs(const std::string& dir, const std::string& options);
  ~ScopedTmpfs();
  ScopedTmpfs(const ScopedTmpfs&) = delete;
  ScopedTmpfs& operator=(const ScopedTmpfs&) = delete;
  bool mounted() const { return mounted_; }

 private:
  std::string dir_;
  bool mounted_ = false;
};

}  // namespace npzfs::testing
