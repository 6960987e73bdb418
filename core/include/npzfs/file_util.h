// Small RAII and I/O helpers over POSIX file descriptors, shared by every core module.
//
// UniqueFd owns one descriptor and closes it exactly once. The free functions retry on
// EINTR and short transfers, and return a Status naming the path and the failed call.
// All functions are thread-safe as far as the kernel makes pread/pwrite on one fd safe.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "npzfs/status.h"

namespace npzfs {

class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.Release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) Reset(other.Release());
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { Reset(); }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int Release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void Reset(int fd = -1);

 private:
  int fd_ = -1;
};

// Entries of directory `dir` other than "." and "..", counted up to `limit`. The error names
// `dir` if it cannot be listed.
Result<size_t> CountEntries(const std::string& dir, size_t limit);

// What st_mode says the file is, for messages: "a directory", "a FIFO", "a symbolic link"...
const char* FileKind(mode_t mode);

// "uid 1000 (alice)" for messages; "uid 1000" if the user has no name.
std::string DescribeUid(uint32_t uid);

// open(2) with O_CLOEXEC added.
Result<UniqueFd> OpenFile(const std::string& path, int flags, mode_t mode = 0644);
// OpenFile for a file that must be a regular one (an archive, a sidecar, a journal, a .npy):
// EISDIR for a directory, EINVAL for anything else that is not a regular file. A FIFO is
// opened without blocking (open(2) of a FIFO waits for a writer) and refused.
Result<UniqueFd> OpenRegularFile(const std::string& path, int flags, mode_t mode = 0644);
// Clears O_NONBLOCK on `fd` (named `path` in errors): for a file opened without blocking
// only so that open(2) of a FIFO cannot wait.
Status ClearNonBlocking(int fd, const std::string& path);

// Reads exactly `n` bytes at `offset`; a short file is UnexpectedEndOfFile.
Status PreadExact(int fd, void* buf, size_t n, uint64_t offset, const std::string& path);
// EIO with Status::Cause::kUnexpectedEndOfFile: `path` ended at offset `at`, short of the
// `wanted` bytes from offset `from`.
Status UnexpectedEndOfFile(const std::string& path, uint64_t at, uint64_t wanted, uint64_t from);
// Reads up to `n` bytes at `offset`, stopping early only at end of file.
Result<size_t> PreadFull(int fd, void* buf, size_t n, uint64_t offset, const std::string& path);
// Writes all `n` bytes at `offset` (pwrite) or at the current position (write).
Status PwriteAll(int fd, const void* buf, size_t n, uint64_t offset, const std::string& path);
Status WriteAll(int fd, const void* buf, size_t n, const std::string& path);

Status FsyncFd(int fd, const std::string& path);
// fsyncs the directory holding `path`, so a create or rename of `path` is durable.
Status FsyncParentDir(const std::string& path);
Status FsyncDir(const std::string& dir);

Result<uint64_t> FileSize(int fd, const std::string& path);

// The process's umask (read by setting it and putting it back: another thread creating a
// file at that instant would get mode bits unmasked).
mode_t CurrentUmask();

// "dir/name" -> "dir"; "name" -> "."
std::string DirName(const std::string& path);
// "dir/name" -> "name"
std::string BaseName(const std::string& path);
// The part of `path` below the directory `dir`, both absolute: "" for `dir` itself, "/a/b"
// for dir/a/b; nullopt if `path` is neither. By name alone: nothing is resolved.
std::optional<std::string> PathBelow(const std::string& path, const std::string& dir);

}  // namespace npzfs
