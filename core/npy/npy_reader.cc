#include "npzfs/npy_reader.h"

#include <fcntl.h>

#include <algorithm>
#include <utility>

#include "core/npy/npy_file.h"

namespace npzfs {

Result<ParsedNpyHeader> ReadNpyHeaderFrom(uint64_t size, const ReadExactFn& read_exact,
                                          const std::string& name) {
  NPZ_ASSIGN_OR_RETURN(ParsedNpyHeader parsed, ReadNpyHeaderOnly(size, read_exact, name));
  // Object arrays hold a pickle, whose length the header does not predict.
  const NpyHeader& header = parsed.header;
  const uint64_t needed = parsed.length + (header.has_object() ? 0 : header.data_bytes());
  if (needed < parsed.length || size < needed) {
    return Status::Error(EINVAL, name + ": truncated .npy: the header promises " +
                                     std::to_string(header.data_bytes()) +
                                     " data bytes, there are " +
                                     std::to_string(size - parsed.length));
  }
  return parsed;
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
  NPZ_ASSIGN_OR_RETURN(UniqueFd fd, OpenRegularFile(path, O_RDONLY));
  NPZ_ASSIGN_OR_RETURN(uint64_t size, FileSize(fd.get(), path));
  NPZ_ASSIGN_OR_RETURN(ParsedNpyHeader parsed, ReadNpyFileHeader(fd.get(), size, path, options));
  const NpyHeader& header = parsed.header;
  if (header.frameable()) {
    const uint64_t need = parsed.length + header.data_bytes();
    if (size < need) {
      return Status::Error(EIO, path + ": file is " + std::to_string(size) +
                                    " bytes but its header claims " + std::to_string(need));
    }
  }
  return NpyReader(path, std::move(fd), std::move(parsed.header), parsed.length);
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
