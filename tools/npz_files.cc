#include "tools/npz_files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <limits.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <vector>

#include "core/base/text_codec.h"
#include "core/npy/frame_layout.h"
#include "tools/npz_cli.h"

namespace npzfs::tool {

Result<NpyInput> OpenNpyInput(const std::string& path) {
  NPZ_ASSIGN_OR_RETURN(UniqueFd fd, OpenRegularFile(path, O_RDONLY));
  struct stat st;
  if (fstat(fd.get(), &st) != 0) return ErrnoStatus(errno, path, "fstat");
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  const int raw_fd = fd.get();
  auto parsed = ReadNpyHeaderOf(
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

namespace {

// The reader (npzfs/archive.h) skips a member whose name has a component over NAME_MAX
// bytes or is PATH_MAX bytes or longer: `ls`, `verify` and the mount would not show it.
constexpr size_t kMaxNameComponent = NAME_MAX;
constexpr size_t kMaxPath = PATH_MAX;

}  // namespace

Result<std::string> MemberNameForKey(const std::string& key) {
  auto bad = [&](const std::string& why) {
    return Status::Error(EINVAL, "bad key '" + Shown(key) + "': " + why);
  };
  if (key.empty()) return bad("empty");
  if (key.find('\0') != std::string::npos) return bad("it contains a NUL byte");
  if (!IsValidUtf8(key)) {
    return bad(
        "not valid UTF-8 (member names are written as UTF-8: zip readers such as numpy could "
        "not read the archive)");
  }
  if (key[0] == '/') return bad("absolute paths are not allowed in an archive");
  size_t start = 0;
  while (start <= key.size()) {
    size_t end = key.find('/', start);
    if (end == std::string::npos) end = key.size();
    const std::string_view part = std::string_view(key).substr(start, end - start);
    if (part.empty() || part == "." || part == "..") {
      return bad("empty, '.' or '..' path components are not allowed");
    }
    start = end + 1;
  }
  std::string name = key;
  if (IsNpyName(key)) {
    if (BaseName(key) == ".npy") return bad("no name before .npy");
  } else {
    name += ".npy";
  }
  const std::string skipped = ": npz ls, npz verify and the mount would skip the member)";
  for (size_t from = 0; from <= name.size();) {
    size_t end = name.find('/', from);
    if (end == std::string::npos) end = name.size();
    if (end - from > kMaxNameComponent) {
      return bad("its member name has a path component of " + std::to_string(end - from) +
                 " bytes (the limit is " + std::to_string(kMaxNameComponent) + skipped);
    }
    from = end + 1;
  }
  if (name.size() >= kMaxPath) {
    return bad("its member name is " + std::to_string(name.size()) + " bytes long (the limit is " +
               std::to_string(kMaxPath - 1) + skipped);
  }
  return name;
}

std::string StemOf(const std::string& path) {
  std::string base = BaseName(path);
  constexpr size_t kSuffixLength = 4;  // ".npy"
  if (IsNpyName(base) && base.size() > kSuffixLength) base.resize(base.size() - kSuffixLength);
  return base;
}

}  // namespace npzfs::tool
