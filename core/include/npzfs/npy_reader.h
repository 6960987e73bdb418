// NpyReader reads frames from a .npy file with pread, touching only the bytes asked for.
// ReadFramesFrom does the same over any random-access source (an archive member, a cache),
// so every module slices frames the same way and with the same errors.
//
// An NpyReader owns its fd. After Open it is immutable, and ReadFrames may be called from
// several threads at once (pread does not move a shared offset).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "npzfs/file_util.h"
#include "npzfs/npy_header.h"
#include "npzfs/status.h"

namespace npzfs {

// A random-access source: fills `dest` with the bytes at `offset` exactly, or fails.
using ReadExactFn = std::function<Status(uint64_t offset, std::span<std::byte> dest)>;

// Reads and checks the .npy header at the start of a source of `size` bytes: a valid header
// within numpy's limit, and at least as many data bytes as it claims. EINVAL naming `name`
// ("x.npy: not a .npy file: ...", "truncated .npy: ..."), or the source's error.
struct ParsedNpyHeader {
  NpyHeader header;
  size_t length = 0;  // bytes before the first data byte
};
Result<ParsedNpyHeader> ReadNpyHeaderFrom(uint64_t size, const ReadExactFn& read_exact,
                                          const std::string& name);

// Reads frames [start, stop) of an array whose header is `header` and whose data starts at
// `header_len`, by calling `read_at(offset, dest)` which must fill `dest` exactly.
// EINVAL if start > stop or the header is not frameable, ERANGE if stop > frame count;
// messages name `name`.
Result<std::vector<std::byte>> ReadFramesFrom(
    const NpyHeader& header, size_t header_len, uint64_t start, uint64_t stop,
    const std::function<Status(uint64_t offset, std::span<std::byte> dest)>& read_at,
    const std::string& name);

class NpyReader {
 public:
  // Opens and parses `path`. EINVAL for a bad header, EIO if the file is shorter than the
  // header claims, errno of failed calls.
  static Result<NpyReader> Open(const std::string& path, const NpyParseOptions& options = {});

  const NpyHeader& header() const { return header_; }
  size_t header_length() const { return header_len_; }
  const std::string& path() const { return path_; }

  // Frames [start, stop); see ReadFramesFrom for the errors.
  Result<std::vector<std::byte>> ReadFrames(uint64_t start, uint64_t stop) const;

 private:
  NpyReader(std::string path, UniqueFd fd, NpyHeader header, size_t header_len)
      : path_(std::move(path)),
        fd_(std::move(fd)),
        header_(std::move(header)),
        header_len_(header_len) {}

  std::string path_;
  UniqueFd fd_;
  NpyHeader header_;
  size_t header_len_;
};

}  // namespace npzfs
