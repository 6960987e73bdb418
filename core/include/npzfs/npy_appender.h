// NpyAppender grows a .npy file one frame at a time: numpyWriter's NumpyFileManager in 'w'
// mode. Frames are buffered in memory and written behind the header; after the data the
// header's growth-axis count is rewritten in place (the canonical header never changes length).
//
// Crash safety: the header never claims frames that are not on disk before it. Flush writes
// the data first, then the count; with Durability::kSync it fsyncs the data, rewrites the
// header and fsyncs again (and fsyncs the directory once after creating the file). After a
// crash the file may hold more complete frames than the header says, or a partial frame at
// the end; Recover() repairs both from the file size.
//
// An NpyAppender owns its fd and its buffer. It is not thread-safe: one writer per file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "npzfs/file_util.h"
#include "npzfs/npy_header.h"
#include "npzfs/status.h"

namespace npzfs {

enum class Durability {
  kNone,  // write(2) the data and the header; the page cache may still lose them
  kSync,  // write, fsync the data, rewrite the header, fsync again
};

struct NpyAppenderOptions {
  // Frames are written once this many bytes are buffered (numpyWriter's bufferMax).
  size_t buffer_bytes = 16 << 20;
};

class NpyAppender {
 public:
  // Creates `path` with `layout` (its count is ignored), or reopens an existing .npy whose
  // header has the same frame layout and appends to it. EINVAL naming the file if the layout
  // differs, the layout is not frameable or has zero-byte frames; errno of failed calls.
  // A reopened file is first repaired like Recover() (a partial frame is dropped).
  static Result<std::unique_ptr<NpyAppender>> Open(const std::string& path, const NpyHeader& layout,
                                                   const NpyAppenderOptions& options = {});
  ~NpyAppender();  // best effort Flush(kNone); call Close() to see errors
  NpyAppender(const NpyAppender&) = delete;
  NpyAppender& operator=(const NpyAppender&) = delete;

  // Exactly frame_bytes() bytes; EINVAL otherwise.
  Status AddFrame(std::span<const std::byte> frame);
  // A multiple of frame_bytes() bytes; EINVAL otherwise.
  Status AddFrames(std::span<const std::byte> frames);
  // Writes buffered frames, then the count in the header.
  Status Flush(Durability durability);
  // Flush(kNone) and close the file; every later call fails with EBADF.
  Status Close();

  uint64_t frame_count() const { return frame_count_; }  // frames added (buffered or not)
  uint64_t frame_bytes() const { return header_.frame_bytes(); }
  const std::string& path() const { return path_; }

  // Repairs the count in the header from the file size after a crash: keeps every complete
  // frame, drops (truncates) a partial one, fsyncs. Returns the frame count kept.
  // EINVAL if the file is not a frameable .npy with a rewritable header.
  static Result<uint64_t> Recover(const std::string& path);

 private:
  struct Key {};  // lets Open use make_unique while the constructor stays private in effect

 public:
  NpyAppender(Key, std::string path, UniqueFd fd, NpyHeader header, size_t header_len,
              uint64_t on_disk_frames, const NpyAppenderOptions& options, bool created);

 private:
  Status WriteBuffer();
  Status WriteHeader(uint64_t count);
  Status CheckOpen() const;

  std::string path_;
  UniqueFd fd_;
  NpyHeader header_;        // layout; its count is the count last written to disk
  size_t header_len_;       // bytes of the on-disk header (data starts here)
  uint64_t disk_frames_;    // frames whose data is on disk (written, maybe not synced)
  uint64_t header_frames_;  // count the on-disk header states
  uint64_t frame_count_;    // disk_frames_ + buffered frames
  std::vector<std::byte> buffer_;
  size_t buffer_limit_;
  bool created_ = false;  // file created by Open; fsync its directory on first kSync
  bool dir_synced_ = false;
};

}  // namespace npzfs
