// The shared state of one deflated member (checkpoint index, first-pass frontier, CRC
// verdict), behind all its readers. Used by Archive (core/read/archive.cc); the FUSE daemon
// and the npz tool need only the MemberReader interface in npzfs/member_reader.h.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "core/read/archive_shared.h"
#include "core/read/inflate_index.h"
#include "core/read/span_cache.h"
#include "npzfs/file_util.h"
#include "npzfs/member_reader.h"
#include "npzfs/status.h"
#include "npzfs/zip_directory.h"

namespace npzfs {

// The state of one deflated member, shared by all its readers: the checkpoint index, the
// first-pass frontier, the CRC verdict. See core/read/inflate_index.cc for the design.
//
// Locks (in this order; never the other way round):
//   frontier_mu_  held by the one thread extending the first pass, *while inflating*: the
//                 first pass is sequential by nature, and a thread that needs an offset
//                 beyond it must wait for it anyway.
//   index_mu_     guards checkpoints_, complete_, corrupt_, CRC and version; held only for
//                 short copies, never while inflating or doing I/O.
//   SpanCache::mu_ and StreamPool::mu_ are leaves taken by their own methods.
// Producing a known span from a checkpoint holds no lock at all while inflating.
class DeflatedMember : public std::enable_shared_from_this<DeflatedMember> {
 public:
  // `spacing` is clamped to [kMinSpacing, kMaxSpacing].
  DeflatedMember(std::shared_ptr<ArchiveShared> shared, uint64_t id, std::string member_path,
                 const ZipEntry& entry, uint64_t spacing);

  uint64_t size() const { return entry_.uncompressed_size; }
  Result<size_t> ReadAt(uint64_t offset, std::span<std::byte> dest);
  // Runs the first pass to the end (without filling the cache).
  Status BuildIndex(const std::function<void(uint64_t, uint64_t)>& progress);

  bool complete() const;
  size_t checkpoint_count() const;
  uint64_t index_bytes() const;
  uint64_t first_pass_spans() const { return first_pass_spans_.load(); }

  // Sidecar support. Snapshot returns the checkpoints worth saving (all of them when
  // complete; else those up to the frontier) and the version they correspond to.
  struct Snapshot {
    std::vector<Checkpoint> checkpoints;
    bool complete = false;
    uint64_t version = 0;
  };
  Snapshot TakeSnapshot() const;
  void MarkSaved(uint64_t version);
  bool dirty() const;
  // Installs checkpoints read from the sidecar (already validated by the caller).
  void Load(std::vector<Checkpoint> checkpoints, bool complete);

  const ZipEntry& entry() const { return entry_; }
  const std::string& member_path() const { return member_path_; }

 private:
  struct SpanRef {
    SpanPtr span;
    uint64_t start = 0;
  };
  // One span of the first pass: its bytes, and where the next span starts (none at the end).
  struct NewSpan {
    SpanBuffer buf;
    size_t len = 0;
    std::optional<Checkpoint> next;
  };
  Result<SpanRef> SpanAt(uint64_t pos);
  Result<SpanPtr> ProduceKnownSpan(size_t k, uint64_t generation);
  // Decodes `len` bytes from checkpoint `cp` (a parked stream continues when one is there).
  Result<size_t> DecodeSpan(const Checkpoint& cp, std::byte* out, size_t len);
  // Extends the first pass until the span holding `target` exists (target == UINT64_MAX:
  // to the end). Returns nullopt when another thread got there first (retry the lookup).
  Result<std::optional<SpanRef>> AdvanceFrontier(
      uint64_t target, bool fill_cache, const std::function<void(uint64_t, uint64_t)>& progress);
  // The first pass's steps, in order: inflate from checkpoint `cp` to the next checkpoint,
  // which is a block boundary at least spacing_ bytes on, or a cut inside a longer block at
  // 2 * spacing_; give the next checkpoint its sparse window; publish the span.
  Result<NewSpan> InflateSpan(InflateStream& stream, const Checkpoint& cp);
  Status MakeWindow(InflateStream& stream, NewSpan& span);
  Result<SpanPtr> PublishSpan(size_t k, uint64_t start, NewSpan span, bool fill_cache);
  Result<std::unique_ptr<InflateStream>> StreamAt(const Checkpoint& cp, bool track_blocks);
  // A span decoded from saved checkpoints failed: drop them (if still those of `generation`)
  // and let a first pass rebuild them from the data. Returns EAGAIN (look up again), or
  // `failure` when the checkpoints were not from the sidecar (then the data is bad).
  Status Distrust(uint64_t generation, const Status& failure);
  // The first pass failed with `s` (frontier_mu_ held by `frontier`, released here): a
  // distrusted sidecar (EAGAIN), or a corrupt member.
  Status FirstPassFailed(std::unique_lock<std::mutex>& frontier, Status s);
  Status Bad(const std::string& why) const;  // EIO naming the member, nothing marked
  Status Corrupt(const std::string& why);    // marks the member corrupt, logs, returns EIO
  Status MarkCorrupt(Status s);              // the same with a complete message

  const std::shared_ptr<ArchiveShared> shared_;
  const uint64_t id_;
  const std::string member_path_;
  const ZipEntry entry_;
  const uint64_t spacing_;
  const DeflateSource source_;

  std::mutex frontier_mu_;
  mutable std::mutex index_mu_;
  std::vector<Checkpoint> checkpoints_;  // checkpoints_[0] is the start of the data
  bool complete_ = false;                // every span known, whole CRC checked
  uint32_t crc_so_far_ = 0;              // CRC-32 of the spans before the frontier
  Status corrupt_;                       // non-ok once corrupt: every read fails
  uint64_t generation_ = 0;              // bumped when checkpoints_ is replaced
  bool from_sidecar_ = false;            // checkpoints_ came from the sidecar
  uint64_t version_ = 0;                 // bumped when checkpoints are learned
  uint64_t saved_version_ = 0;
  std::atomic<uint64_t> first_pass_spans_{0};
};

// A reader handle of a deflated member.
std::shared_ptr<MemberReader> MakeDeflatedReader(std::shared_ptr<DeflatedMember> member);

}  // namespace npzfs
