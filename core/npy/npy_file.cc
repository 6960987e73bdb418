#include "core/npy/npy_file.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "npzfs/file_util.h"

namespace npzfs {
namespace {

// Version 1.0 announces its length in 10 bytes, 2.0 and 3.0 in 12.
constexpr size_t kLengthPrefixBytes = 12;
constexpr size_t kShortestPrefixBytes = 10;
// Parse refuses more than kMaxHeaderChars characters; UTF-8 (version 3.0) takes at most 4
// bytes per character, so no longer header is ever read into memory.
constexpr size_t kMaxHeaderBytes = kLengthPrefixBytes + 4 * NpyHeader::kMaxHeaderChars;

ReadExactFn PreadFrom(int fd, const std::string& path) {
  return [fd, path](uint64_t offset, std::span<std::byte> dest) {
    return PreadExact(fd, dest.data(), dest.size(), offset, path);
  };
}

Result<size_t> HeaderLength(uint64_t size, const ReadExactFn& read_exact, const std::string& name) {
  if (size < kShortestPrefixBytes) {
    return Status::Error(EINVAL,
                         name + ": not a .npy file: only " + std::to_string(size) + " bytes");
  }
  std::string prefix(static_cast<size_t>(std::min<uint64_t>(size, kLengthPrefixBytes)), '\0');
  NPZ_RETURN_IF_ERROR(read_exact(0, std::as_writable_bytes(std::span(prefix))));
  auto length = NpyHeader::TotalLength(prefix);
  if (!length.ok()) return length.status().WithContext(name + ": not a .npy file");
  return *length;
}

}  // namespace

Result<ParsedNpyHeader> ReadNpyHeaderOnly(uint64_t size, const ReadExactFn& read_exact,
                                          const std::string& name, const NpyParseOptions& options) {
  NPZ_ASSIGN_OR_RETURN(size_t length, HeaderLength(size, read_exact, name));
  if (length > kMaxHeaderBytes && !options.allow_large_header) {
    return Status::Error(EINVAL, name + ": not a .npy file numpy would load: its header of " +
                                     std::to_string(length) +
                                     " bytes is over the safety limit of " +
                                     std::to_string(NpyHeader::kMaxHeaderChars) + " characters");
  }
  if (length > size) {
    return Status::Error(EINVAL, name + ": truncated .npy header: it needs " +
                                     std::to_string(length) + " bytes, the file has " +
                                     std::to_string(size));
  }
  std::string bytes(length, '\0');
  NPZ_RETURN_IF_ERROR(read_exact(0, std::as_writable_bytes(std::span(bytes))));
  auto header = NpyHeader::Parse(bytes, options);
  if (!header.ok()) return header.status().WithContext(name + ": bad .npy header");
  return ParsedNpyHeader{*header, length};
}

Result<size_t> ReadNpyHeaderLength(int fd, uint64_t size, const std::string& path) {
  return HeaderLength(size, PreadFrom(fd, path), path);
}

Result<ParsedNpyHeader> ReadNpyFileHeader(int fd, uint64_t size, const std::string& path,
                                          const NpyParseOptions& options) {
  return ReadNpyHeaderOnly(size, PreadFrom(fd, path), path, options);
}

Result<NpyRepair> RepairNpyFile(int fd, const ParsedNpyHeader& file, uint64_t size,
                                const std::string& path) {
  if (size < file.length) {
    return Status::Error(EINVAL, path + ": file is shorter than its own header");
  }
  const uint64_t frame = file.header.frame_bytes();
  if (frame == 0) return Status::Error(EINVAL, path + ": frames of zero bytes cannot be counted");
  NpyRepair repair;
  repair.frames = (size - file.length) / frame;
  const uint64_t keep = file.length + repair.frames * frame;
  repair.dropped_bytes = size - keep;
  if (repair.dropped_bytes > 0) {
    int r;
    do {
      r = ::ftruncate(fd, static_cast<off_t>(keep));
    } while (r < 0 && errno == EINTR);
    if (r < 0) return ErrnoStatus(errno, path, "ftruncate failed");
  }
  NPZ_ASSIGN_OR_RETURN(repair.header, file.header.WithFrameCountChecked(repair.frames));
  if (file.header.frame_count() != repair.frames) {
    auto bytes = repair.header.FormatPadded(file.length);
    if (!bytes.ok()) return bytes.status().WithContext(path);
    NPZ_RETURN_IF_ERROR(PwriteAll(fd, bytes->data(), bytes->size(), 0, path));
  }
  return repair;
}

}  // namespace npzfs
