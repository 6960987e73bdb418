#include "tools/npz_files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <vector>

#include "core/npy/frame_layout.h"

namespace npzfs::tool {

Result<NpyInput> OpenNpyInput(const std::string& path) {
  NPZ_ASSIGN_OR_RETURN(UniqueFd fd, OpenFile(path, O_RDONLY));
  struct stat st;
  if (fstat(fd.get(), &st) != 0) return ErrnoStatus(errno, path, "fstat");
  if (S_ISDIR(st.st_mode)) return Status::Error(EISDIR, path + ": is a directory, not a .npy");
  if (!S_ISREG(st.st_mode)) return Status::Error(EINVAL, path + ": not a regular file");
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  const int raw_fd = fd.get();
  auto parsed = ReadNpyHeaderFrom(
      size,
      [&](uint64_t offset, std::span<std::byte> dest) {
        return PreadExact(raw_fd, dest.data(), dest.size(), offset, path);
      },
      path);
  if (!parsed.ok()) return parsed.status();
  NpyInput input;
  input.path = path;
  input.fd = std::move(fd);
  input.size = size;
  input.header_length = parsed->length;
  input.header = parsed->header;
  return input;
}

Result<std::string> MemberNameForKey(const std::string& key) {
  auto bad = [&](const std::string& why) {
    return Status::Error(EINVAL, "bad key '" + key + "': " + why);
  };
  if (key.empty()) return bad("empty");
  if (key[0] == '/') return bad("absolute paths are not allowed in an archive");
  size_t start = 0;
  while (start <= key.size()) {
    size_t end = key.find('/', start);
    if (end == std::string::npos) end = key.size();
    const std::string part = key.substr(start, end - start);
    if (part.empty() || part == "." || part == "..") {
      return bad("empty, '.' or '..' path components are not allowed");
    }
    start = end + 1;
  }
  if (IsNpyName(key)) {
    if (BaseName(key) == ".npy") return bad("no name before .npy");
    return key;
  }
  return key + ".npy";
}

std::string StemOf(const std::string& path) {
  std::string base = BaseName(path);
  constexpr size_t kSuffixLength = 4;  // ".npy"
  if (IsNpyName(base) && base.size() > kSuffixLength) base.resize(base.size() - kSuffixLength);
  return base;
}

}  // namespace npzfs::tool
