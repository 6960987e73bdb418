#include "npzfs/npy_reader.h"

#include <fcntl.h>

#include <algorithm>

#include <utility>

namespace npzfs {

Result<ParsedNpyHeader> ReadNpyHeaderFrom(uint64_t size, const ReadExactFn& read_exact,
                                          const std::string& name) {
  // Version 1.0 needs 10 bytes to know its length, 2.0 and 3.0 need 12.
  if (size < 10) {
    return Status::Error(EINVAL,
                         name + ": not a .npy file: only " + std::to_string(size) + " bytes");
  }
  std::string prefix(static_cast<size_t>(std::min<uint64_t>(size, 12)), '\0');
  NPZ_RETURN_IF_ERROR(read_exact(0, std::as_writable_bytes(std::span(prefix))));
  auto length = NpyHeader::TotalLength(prefix);
  if (!length.ok()) return length.status().WithContext(name + ": not a .npy file");
  // The parser refuses more than 10000 dict characters; do not read a huge claimed length.
  if (*length > NpyHeader::kMaxHeaderChars + 64) {
    return Status::Error(EINVAL, name + ": not a .npy file numpy would load: header of " +
                                     std::to_string(*length) + " bytes is over numpy's limit");
  }
  if (*length > size) {
    return Status::Error(EINVAL, name + ": truncated .npy: the header needs " +
                                     std::to_string(*length) + " bytes, the file has " +
                                     std::to_string(size));
  }
  std::string bytes(*length, '\0');
  NPZ_RETURN_IF_ERROR(read_exact(0, std::as_writable_bytes(std::span(bytes))));
  auto header = NpyHeader::Parse(bytes);
  if (!header.ok()) return header.status().WithContext(name + ": bad .npy header");
  // Object arrays hold a pickle, whose length the header does not predict.
  const uint64_t needed = *length + (header->has_object() ? 0 : header->data_bytes());
  if (needed < *length || size < needed) {
    return Status::Error(EINVAL, name + ": truncated .npy: the header promises " +
                                     std::to_string(header->data_bytes()) +
                                     " data bytes, there are " + std::to_string(size - *length));
  }
  return ParsedNpyHeader{*header, *length};
}

Result<std::vector<std::byte>> ReadFramesFrom(
    const NpyHeader& header, size_t header_len, uint64_t start, uint64_t stop,
    const std::function<Status(uint64_t offset, std::span<std::byte> dest)>& read_at,
    const std::string& name) {
  if (!header.frameable()) {
    return Status::Error(EINVAL, name + ": cannot read frames: " +
                                     (header.has_object() ? "object arrays hold a pickle"
                                                          : "a 0-d array has no frames"));
  }
  if (start > stop) {
    return Status::Error(EINVAL, name + ": frame range start " + std::to_string(start) +
                                     " is after its stop " + std::to_string(stop));
  }
  uint64_t count = header.frame_count();
  if (stop > count) {
    return Status::Error(ERANGE, name + ": frame range [" + std::to_string(start) + ", " +
                                     std::to_string(stop) + ") is past the " +
                                     std::to_string(count) + " frames in the array");
  }
  // Both products are bounded by data_bytes(), which Parse checked against overflow.
  uint64_t frame = header.frame_bytes();
  uint64_t bytes = (stop - start) * frame;
  uint64_t offset = header_len + start * frame;
  if (bytes > SIZE_MAX) return Status::Error(ENOMEM, name + ": frame range too large");
  std::vector<std::byte> out(static_cast<size_t>(bytes));
  if (bytes > 0) NPZ_RETURN_IF_ERROR(read_at(offset, std::span<std::byte>(out)));
  return out;
}

Result<NpyReader> NpyReader::Open(const std::string& path, const NpyParseOptions& options) {
  NPZ_ASSIGN_OR_RETURN(UniqueFd fd, OpenFile(path, O_RDONLY));
  std::string prefix(12, '\0');
  NPZ_ASSIGN_OR_RETURN(size_t got, PreadFull(fd.get(), prefix.data(), prefix.size(), 0, path));
  prefix.resize(got);
  auto total = NpyHeader::TotalLength(prefix);
  if (!total.ok()) return total.status().WithContext(path);
  // Refuse to allocate a hostile length field: 4 bytes per character at most.
  if (!options.allow_large_header && *total > 12 + 4 * NpyHeader::kMaxHeaderChars) {
    return Status::Error(EINVAL, path + ": header length " + std::to_string(*total) +
                                     " is over the safety limit of " +
                                     std::to_string(NpyHeader::kMaxHeaderChars) + " characters");
  }
  NPZ_ASSIGN_OR_RETURN(uint64_t file_size, FileSize(fd.get(), path));
  if (*total > file_size) {
    return Status::Error(EINVAL, path + ": truncated .npy header: it needs " +
                                     std::to_string(*total) + " bytes, the file has " +
                                     std::to_string(file_size));
  }
  std::string bytes(*total, '\0');
  NPZ_ASSIGN_OR_RETURN(got, PreadFull(fd.get(), bytes.data(), bytes.size(), 0, path));
  bytes.resize(got);
  auto header = NpyHeader::Parse(bytes, options);
  if (!header.ok()) return header.status().WithContext(path);
  if (header->frameable()) {
    uint64_t size = file_size;
    uint64_t need = *total + header->data_bytes();
    if (size < need) {
      return Status::Error(EIO, path + ": file is " + std::to_string(size) +
                                    " bytes but its header claims " + std::to_string(need));
    }
  }
  return NpyReader(path, std::move(fd), std::move(header).value(), *total);
}

Result<std::vector<std::byte>> NpyReader::ReadFrames(uint64_t start, uint64_t stop) const {
  return ReadFramesFrom(
      header_, header_len_, start, stop,
      [this](uint64_t offset, std::span<std::byte> dest) {
        return PreadExact(fd_.get(), dest.data(), dest.size(), offset, path_);
      },
      path_);
}

}  // namespace npzfs
