#include "tools/npz_files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <vector>

namespace npzfs::tool {

Result<ParsedNpyHeader> ReadNpyHeader(
    uint64_t size, const std::function<Status(uint64_t, std::span<std::byte>)>& read_exact,
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

Result<NpyInput> OpenNpyInput(const std::string& path) {
  NPZ_ASSIGN_OR_RETURN(UniqueFd fd, OpenFile(path, O_RDONLY));
  struct stat st;
  if (fstat(fd.get(), &st) != 0) return ErrnoStatus(errno, path, "fstat");
  if (S_ISDIR(st.st_mode)) return Status::Error(EISDIR, path + ": is a directory, not a .npy");
  if (!S_ISREG(st.st_mode)) return Status::Error(EINVAL, path + ": not a regular file");
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  const int raw_fd = fd.get();
  auto parsed = ReadNpyHeader(
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
  const std::string suffix = ".npy";
  if (key.size() >= suffix.size() &&
      key.compare(key.size() - suffix.size(), suffix.size(), suffix) == 0) {
    if (key.size() == suffix.size()) return bad("no name before .npy");
    return key;
  }
  return key + suffix;
}

std::string StemOf(const std::string& path) {
  std::string base = BaseName(path);
  const std::string suffix = ".npy";
  if (base.size() > suffix.size() &&
      base.compare(base.size() - suffix.size(), suffix.size(), suffix) == 0) {
    base.resize(base.size() - suffix.size());
  }
  return base;
}

Result<AtomicOutput> AtomicOutput::Create(const std::string& path) {
  std::string temp = DirName(path) + "/." + BaseName(path) + ".npz-tmp-XXXXXX";
  std::vector<char> name(temp.begin(), temp.end());
  name.push_back('\0');
  int fd = mkostemp(name.data(), O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(errno, path, "cannot create output");
  return AtomicOutput(path, std::string(name.data()), UniqueFd(fd));
}

AtomicOutput::AtomicOutput(AtomicOutput&& other) noexcept
    : path_(std::move(other.path_)),
      temp_path_(std::move(other.temp_path_)),
      fd_(std::move(other.fd_)),
      committed_(other.committed_) {
  other.committed_ = true;  // the moved-from object owns no temp file any more
}

AtomicOutput::~AtomicOutput() {
  if (!committed_ && !temp_path_.empty()) unlink(temp_path_.c_str());
}

Status AtomicOutput::Write(const void* data, size_t n) {
  return WriteAll(fd_.get(), data, n, path_);
}

Status AtomicOutput::Commit() {
  const mode_t mask = umask(0);
  umask(mask);
  if (fchmod(fd_.get(), 0666 & ~mask) != 0) return ErrnoStatus(errno, path_, "fchmod");
  NPZ_RETURN_IF_ERROR(FsyncFd(fd_.get(), path_));
  if (rename(temp_path_.c_str(), path_.c_str()) != 0) {
    return ErrnoStatus(errno, path_, "rename into place");
  }
  committed_ = true;
  fd_.Reset();
  return FsyncParentDir(path_);
}

}  // namespace npzfs::tool
