// NpyAppender: growing a .npy in place.
//
// The file is always: canonical header (fixed length, count = header_frames_) + the data of
// disk_frames_ frames (+ after a crash, maybe a partial frame). The invariant that makes it
// crash safe is header_frames_ <= frames whose bytes reached the file before the header did:
// every flush writes the data first and the count second, and kSync puts an fsync between
// them, so a power cut can leave a header that is behind the data, never ahead of it.
// Recover() then brings the count up to the complete frames and truncates a partial one.
//
// Alternatives rejected: writing the header first (a crash exposes garbage frames to
// numpy); a side file with the count (numpy would not see it); O_APPEND (we rewrite the
// header at offset 0, and pwrite at computed offsets keeps reopen-after-crash simple).
#include "npzfs/npy_appender.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include "core/base/atomic_file.h"
#include "core/npy/frame_layout.h"
#include "core/npy/npy_file.h"

namespace npzfs {
namespace {

std::string Describe(const NpyHeader& h) {
  return "descr " + h.descr_literal() + ", fortran_order " +
         (h.fortran_order() ? "True" : "False") + ", frame shape (" + AxesText(h.frame_shape()) +
         ")";
}

// Creates `path` holding `header`, so that no one (not even Recover after a crash) ever sees
// it without a complete header: the header goes into an AtomicFile temp file in the same
// directory, which is then hard-linked to `path` instead of renamed over it. link(2) fails
// with EEXIST instead of replacing a file that appeared meanwhile; then that file is opened
// instead, as if it had been there (an invalid UniqueFd says so).
Result<UniqueFd> CreateWithHeader(const std::string& path, const std::string& header) {
  AtomicFileOptions mode;
  mode.mode = 0644;
  NPZ_ASSIGN_OR_RETURN(AtomicFile temp, AtomicFile::Create(path, mode));
  NPZ_RETURN_IF_ERROR(temp.Write(header));
  UniqueFd fd(::fcntl(temp.fd(), F_DUPFD_CLOEXEC, 0));
  if (!fd.valid()) return ErrnoStatus(errno, path, "dup failed");
  if (::link(temp.temp_path().c_str(), path.c_str()) == 0) return fd;  // temp is unlinked
  if (errno == EEXIST) return UniqueFd();
  return ErrnoStatus(errno, path, "cannot create");
}

// Writes frame data at `offset`, the data end. A write that fails part way (ENOSPC, EFBIG)
// may have added some of its bytes: they are cut again, because Open and Recover count
// frames from the file size and would take them for frames. The write's error is what the
// caller gets; if the cut fails too, a reopen may count those bytes (nothing better to do).
Status PwriteData(int fd, std::span<const std::byte> data, uint64_t offset,
                  const std::string& path) {
  Status st = PwriteAll(fd, data.data(), data.size(), offset, path);
  if (!st.ok()) (void)::ftruncate(fd, static_cast<off_t>(offset));
  return st;
}

}  // namespace

NpyAppender::NpyAppender(Key, std::string path, UniqueFd fd, NpyHeader header, size_t header_len,
                         uint64_t on_disk_frames, const NpyAppenderOptions& options, bool created)
    : path_(std::move(path)),
      fd_(std::move(fd)),
      header_(std::move(header)),
      header_len_(header_len),
      disk_frames_(on_disk_frames),
      header_frames_(on_disk_frames),
      frame_count_(on_disk_frames),
      buffer_limit_(std::max<size_t>(options.buffer_bytes, 1)),
      created_(created) {}

NpyAppender::~NpyAppender() {
  if (fd_.valid()) (void)Flush(Durability::kNone);
}

Result<std::unique_ptr<NpyAppender>> NpyAppender::Open(const std::string& path,
                                                       const NpyHeader& layout,
                                                       const NpyAppenderOptions& options) {
  NPZ_RETURN_IF_ERROR(CheckGrowable(layout, path));
  NpyHeader empty = layout.WithFrameCount(0);
  auto opened = OpenRegularFile(path, O_RDWR);
  if (!opened.ok() && opened.status().code() == ENOENT) {
    NPZ_ASSIGN_OR_RETURN(UniqueFd created, CreateWithHeader(path, empty.Format()));
    if (created.valid()) {
      return std::make_unique<NpyAppender>(Key{}, path, std::move(created), empty,
                                           empty.FormattedLength(), 0, options, true);
    }
    opened = OpenRegularFile(path, O_RDWR);  // another writer created it first: append to it
  }
  if (!opened.ok()) return opened.status();
  UniqueFd fd = std::move(opened).value();
  NPZ_ASSIGN_OR_RETURN(uint64_t size, FileSize(fd.get(), path));
  if (size == 0) {
    // An empty file someone else created: give it the header in place.
    std::string bytes = empty.Format();
    NPZ_RETURN_IF_ERROR(PwriteAll(fd.get(), bytes.data(), bytes.size(), 0, path));
    return std::make_unique<NpyAppender>(Key{}, path, std::move(fd), empty, bytes.size(), 0,
                                         options, false);
  }
  NPZ_ASSIGN_OR_RETURN(ParsedNpyHeader existing, ReadNpyFileHeader(fd.get(), size, path));
  if (!existing.header.SameFrameLayout(layout)) {
    return Status::Error(EINVAL, path + ": cannot append: the file has " +
                                     Describe(existing.header) + " but the frames have " +
                                     Describe(layout));
  }
  NPZ_RETURN_IF_ERROR(CheckGrowable(existing.header, path));
  // The count must be rewritable in place for every count we may reach.
  if (!existing.header.WithFrameCount(UINT64_MAX).FormatPadded(existing.length).ok()) {
    return Status::Error(EINVAL, path + ": its " + std::to_string(existing.length) +
                                     "-byte header has no room to grow in place (written "
                                     "before numpy 1.24?); rewrite it with np.save");
  }
  NPZ_ASSIGN_OR_RETURN(NpyRepair repair, RepairNpyFile(fd.get(), existing, size, path));
  return std::make_unique<NpyAppender>(Key{}, path, std::move(fd), repair.header, existing.length,
                                       repair.frames, options, false);
}

Status NpyAppender::CheckOpen() const {
  if (!fd_.valid()) return Status::Error(EBADF, path_ + ": appender is closed");
  return Status::Ok();
}

Status NpyAppender::AddFrame(std::span<const std::byte> frame) {
  if (frame.size() != frame_bytes()) {
    return Status::Error(EINVAL, path_ + ": a frame is " + std::to_string(frame_bytes()) +
                                     " bytes, got " + std::to_string(frame.size()));
  }
  return AddFrames(frame);
}

Status NpyAppender::AddFrames(std::span<const std::byte> frames) {
  NPZ_RETURN_IF_ERROR(CheckOpen());
  uint64_t fb = frame_bytes();
  if (frames.size() % fb != 0) {
    return Status::Error(EINVAL, path_ + ": " + std::to_string(frames.size()) +
                                     " bytes is not a whole number of " + std::to_string(fb) +
                                     "-byte frames");
  }
  uint64_t n = frames.size() / fb;
  // The data end (header_len_ + count * fb) must stay representable.
  uint64_t max_frames = (UINT64_MAX - header_len_) / fb;
  if (n > max_frames - frame_count_) {
    return Status::Error(EFBIG, path_ + ": too many frames");
  }
  if (buffer_.size() + frames.size() > buffer_limit_) {
    NPZ_RETURN_IF_ERROR(Flush(Durability::kNone));
    if (frames.size() >= buffer_limit_) {
      // Large writes skip the copy; the data goes straight behind what is on disk.
      NPZ_RETURN_IF_ERROR(PwriteData(fd_.get(), frames, header_len_ + disk_frames_ * fb, path_));
      disk_frames_ += n;
      frame_count_ += n;
      return WriteHeader(disk_frames_);
    }
  }
  buffer_.insert(buffer_.end(), frames.begin(), frames.end());
  frame_count_ += n;
  return Status::Ok();
}

Status NpyAppender::WriteBuffer() {
  if (buffer_.empty()) return Status::Ok();
  uint64_t fb = frame_bytes();
  NPZ_RETURN_IF_ERROR(PwriteData(fd_.get(), buffer_, header_len_ + disk_frames_ * fb, path_));
  disk_frames_ += buffer_.size() / fb;
  buffer_.clear();
  return Status::Ok();
}

Status NpyAppender::WriteHeader(uint64_t count) {
  auto bytes = header_.WithFrameCount(count).FormatPadded(header_len_);
  if (!bytes.ok()) return bytes.status().WithContext(path_);
  NPZ_RETURN_IF_ERROR(PwriteAll(fd_.get(), bytes->data(), bytes->size(), 0, path_));
  header_frames_ = count;
  return Status::Ok();
}

Status NpyAppender::Flush(Durability durability) {
  NPZ_RETURN_IF_ERROR(CheckOpen());
  NPZ_RETURN_IF_ERROR(WriteBuffer());
  if (durability == Durability::kSync) {
    // The data must be durable before a durable header may claim it.
    NPZ_RETURN_IF_ERROR(FsyncFd(fd_.get(), path_));
    if (header_frames_ != disk_frames_) {
      NPZ_RETURN_IF_ERROR(WriteHeader(disk_frames_));
      NPZ_RETURN_IF_ERROR(FsyncFd(fd_.get(), path_));
    }
    if (created_ && !dir_synced_) {
      NPZ_RETURN_IF_ERROR(FsyncParentDir(path_));
      dir_synced_ = true;
    }
    return Status::Ok();
  }
  if (header_frames_ != disk_frames_) NPZ_RETURN_IF_ERROR(WriteHeader(disk_frames_));
  return Status::Ok();
}

Status NpyAppender::Close() {
  NPZ_RETURN_IF_ERROR(Flush(Durability::kNone));
  int fd = fd_.Release();
  if (::close(fd) != 0 && errno != EINTR) return ErrnoStatus(errno, path_, "close failed");
  return Status::Ok();
}

Result<uint64_t> NpyAppender::Recover(const std::string& path) {
  NPZ_ASSIGN_OR_RETURN(UniqueFd fd, OpenRegularFile(path, O_RDWR));
  NPZ_ASSIGN_OR_RETURN(uint64_t size, FileSize(fd.get(), path));
  NPZ_ASSIGN_OR_RETURN(ParsedNpyHeader existing, ReadNpyFileHeader(fd.get(), size, path));
  NPZ_RETURN_IF_ERROR(CheckGrowable(existing.header, path));
  NPZ_ASSIGN_OR_RETURN(NpyRepair repair, RepairNpyFile(fd.get(), existing, size, path));
  NPZ_RETURN_IF_ERROR(FsyncFd(fd.get(), path));
  return repair.frames;
}

}  // namespace npzfs
