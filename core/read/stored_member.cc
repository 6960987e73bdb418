// Stored members: reads, the background verify pass, chunk checks. Design: stored_member.h.
#include "core/read/stored_member.h"

#include <algorithm>
#include <cinttypes>
#include <cstdio>

#include "core/base/crc32.h"
#include "core/read/read_pools.h"
#include "npzfs/file_util.h"

namespace npzfs {
namespace {

constexpr size_t kPieceBytes = 128 << 10;

std::byte* ScratchPiece() {
  thread_local std::unique_ptr<std::byte[]> buf =
      std::make_unique_for_overwrite<std::byte[]>(kPieceBytes);
  return buf.get();
}

}  // namespace

StoredMember::StoredMember(std::shared_ptr<ArchiveShared> shared, std::string member_path,
                           const ZipEntry& entry)
    : shared_(std::move(shared)),
      entry_(entry),
      name_(shared_->path + ": member " + member_path),
      chunks_(ChunkCount(entry.uncompressed_size)),
      crcs_(chunks_, 0),
      state_(std::make_unique<std::atomic<uint8_t>[]>(std::max<uint64_t>(chunks_, 1))) {}

Result<ReadAnswer> StoredMember::Read(uint64_t offset, std::span<std::byte> dest, bool may_splice) {
  NPZ_RETURN_IF_ERROR(shared_->CheckUnchanged());
  const bool check = shared_->verify != VerifyMode::kOff;
  const uint64_t epoch = shared_->change_epoch();
  if (check && epoch != seen_epoch_.load(std::memory_order_acquire)) ForgetChecks(epoch);
  if (offset >= size() || dest.empty()) {
    // The end of the member: its CRC-32 verdict decides between EOF and EIO.
    if (check && offset >= size()) NPZ_RETURN_IF_ERROR(WaitForPass());
    return ReadAnswer{};
  }
  const size_t n = static_cast<size_t>(std::min<uint64_t>(dest.size(), size() - offset));
  if (check) {
    // A read that waited for the pass is checked even if the record was distrusted since
    // (CheckChunks then waits for the new pass): it must never be served unchecked.
    const uint64_t suspect = suspect_chunk_.load(std::memory_order_acquire);
    const bool waited =
        offset + n == size() || shared_->verify == VerifyMode::kStrict ||
        (suspect >= offset / kChunkBytes && suspect <= (offset + n - 1) / kChunkBytes);
    NPZ_RETURN_IF_ERROR(waited ? WaitForPass() : StartPass());
    if (waited || verified()) {
      const uint64_t last = (offset + n - 1) / kChunkBytes;
      NPZ_RETURN_IF_ERROR(CheckChunks(offset / kChunkBytes, last));
      CheckAhead(offset, n, last);
    }
  }
  // Checked, or served unchecked while the pass runs (a copy would be no safer): the member
  // lies within the archive, which CheckUnchanged just found as it was opened.
  if (may_splice) {
    return ReadAnswer::Spliced(n, shared_->fd.get(), entry_.data_offset + offset);
  }
  NPZ_ASSIGN_OR_RETURN(size_t got, PreadFull(shared_->fd.get(), dest.data(), n,
                                             entry_.data_offset + offset, shared_->path));
  if (got != n) {
    NPZ_RETURN_IF_ERROR(shared_->CheckUnchanged());
    return Status::Error(EIO, name_ + ": the archive ends inside the member");
  }
  return ReadAnswer::Copied(n);
}

bool StoredMember::verified() const {
  std::lock_guard<std::mutex> lock(mu_);
  return pass_ == Pass::kDone;
}

Status StoredMember::failure() const {
  std::lock_guard<std::mutex> lock(mu_);
  return failed_;
}

Status StoredMember::Verify() { return WaitForPass(); }

Status StoredMember::StartPass() {
  std::unique_lock<std::mutex> lock(mu_);
  if (!failed_.ok()) return failed_;
  if (pass_ != Pass::kNotStarted) return Status::Ok();
  pass_ = Pass::kRunning;
  cancel_ = false;
  ++pass_attempt_;
  lock.unlock();
  std::weak_ptr<StoredMember> weak = weak_from_this();
  VerifyPool().Submit([weak] { Step(weak); });
  return Status::Ok();
}

Status StoredMember::WaitForPass() {
  NPZ_RETURN_IF_ERROR(StartPass());
  std::unique_lock<std::mutex> lock(mu_);
  const uint64_t attempt = pass_attempt_;
  pass_cv_.wait(lock, [&] {
    return pass_ == Pass::kDone || pass_ == Pass::kFailed || pass_ == Pass::kNotStarted;
  });
  if (pass_ == Pass::kNotStarted) {
    if (error_attempt_ == attempt && !pass_error_.ok()) return pass_error_;
    lock.unlock();  // cancelled while we waited: resume it ourselves
    return WaitForPass();
  }
  return failed_;
}

void StoredMember::Step(std::weak_ptr<StoredMember> weak) {
  if (std::shared_ptr<StoredMember> self = weak.lock()) self->RunStep();
}

void StoredMember::RunStep() {
  uint64_t first = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (pass_ != Pass::kRunning) return;
    if (cancel_) {
      pass_ = Pass::kNotStarted;  // resumable from next_chunk_
      pass_cv_.notify_all();
      return;
    }
    step_running_ = true;
    first = next_chunk_;
    if (first == 0) pass_epoch_ = shared_->change_epoch();
  }
  const uint64_t last = std::min(chunks_, first + kStepChunks);
  std::vector<uint32_t> crcs;
  Status status;
  for (uint64_t c = first; c < last && status.ok(); ++c) {
    Result<uint32_t> crc = ChunkCrc(c);
    if (crc.ok()) {
      crcs.push_back(*crc);
    } else {
      status = crc.status();
    }
  }
  std::unique_lock<std::mutex> lock(mu_);
  for (size_t k = 0; k < crcs.size(); ++k) {
    const uint64_t c = first + k;
    crcs_[c] = crcs[k];
    const uint64_t len = std::min<uint64_t>(kChunkBytes, size() - c * kChunkBytes);
    running_crc_ = Crc32Combine(running_crc_, crcs[k], len);
  }
  next_chunk_ = first + crcs.size();
  if (status.ok() && next_chunk_ < chunks_) {
    step_running_ = false;
    pass_cv_.notify_all();
    lock.unlock();
    std::weak_ptr<StoredMember> weak = weak_from_this();
    VerifyPool().Submit([weak] { Step(weak); });
    return;
  }
  if (!status.ok()) {
    // Not a verdict on the data: stop here, resumable, and tell this attempt's waiters
    // (after the log line, as for a mismatch below).
    lock.unlock();
    shared_->Log(status.message() + " (the check of the member resumes at the next read)");
    lock.lock();
    pass_ = Pass::kNotStarted;
    pass_error_ = status;
    error_attempt_ = pass_attempt_;
    step_running_ = false;
    pass_cv_.notify_all();
    return;
  }
  if (running_crc_ == entry_.crc32) {
    pass_ = Pass::kDone;
    from_sidecar_ = false;
    // Chunks read before a change of the archive may have changed since: checked on touch.
    if (pass_epoch_ == shared_->change_epoch()) {
      for (uint64_t c = 0; c < chunks_; ++c) state_[c].store(kChecked, std::memory_order_release);
    }
    check_cv_.notify_all();
    ++version_;
  } else {
    char text[96];
    std::snprintf(text, sizeof text,
                  ": CRC-32 mismatch (directory %08" PRIx32 ", data %08" PRIx32 ")", entry_.crc32,
                  running_crc_);
    status = Status::Error(EIO, name_ + text);
    // Logged before anyone can see the failure: a reader's EIO is never ahead of its log line.
    lock.unlock();
    shared_->Log(status.message());
    lock.lock();
    if (failed_.ok()) failed_ = status;
    pass_ = Pass::kFailed;
  }
  step_running_ = false;
  pass_cv_.notify_all();
}

Result<uint32_t> StoredMember::ChunkCrc(uint64_t chunk) {
  const uint64_t start = chunk * kChunkBytes;
  const size_t len = static_cast<size_t>(std::min<uint64_t>(kChunkBytes, size() - start));
  // Read in pieces that stay in the core's cache between the copy and the CRC (a whole
  // MiB read first and checked after ran at half the speed).
  std::byte* buf = ScratchPiece();
  uint32_t crc = 0;
  for (size_t done = 0; done < len;) {
    const size_t want = std::min(kPieceBytes, len - done);
    NPZ_ASSIGN_OR_RETURN(size_t got, PreadFull(shared_->fd.get(), buf, want,
                                               entry_.data_offset + start + done, shared_->path));
    check_bytes_.fetch_add(got);
    if (got != want) {
      NPZ_RETURN_IF_ERROR(shared_->CheckUnchanged());
      return Status::Error(EIO, name_ + ": the archive ends inside the member");
    }
    crc = Crc32(crc, buf, got);
    done += got;
  }
  return crc;
}

Status StoredMember::CheckChunks(uint64_t first, uint64_t last) {
  for (uint64_t c = first; c <= last; ++c) {
    if (state_[c].load(std::memory_order_acquire) == kChecked) continue;
    NPZ_ASSIGN_OR_RETURN(Check check, CheckChunk(c, /*wait=*/true));
    if (check == Check::kDone) continue;
    // The sidecar's chunk CRCs are wrong or the data is (kMismatch), or another thread
    // found so (kRetry): a pass over the data decides.
    if (check == Check::kMismatch) Distrust(c);
    NPZ_RETURN_IF_ERROR(WaitForPass());
    --c;  // check this chunk again, against CRCs this process computed
  }
  return Status::Ok();
}

Result<StoredMember::Check> StoredMember::CheckChunk(uint64_t c, bool wait) {
  uint64_t generation = 0;
  {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      if (!failed_.ok()) return failed_;
      const uint8_t state = state_[c].load(std::memory_order_acquire);
      if (state == kChecked) return Check::kDone;
      if (state == kUnchecked) break;
      if (!wait) return Check::kBusy;
      check_cv_.wait(lock);
    }
    if (pass_ != Pass::kDone) return Check::kRetry;
    state_[c].store(kChecking);  // claimed
    generation = generation_;
  }
  Result<uint32_t> crc = ChunkCrc(c);
  std::unique_lock<std::mutex> lock(mu_);
  check_cv_.notify_all();  // the chunk leaves kChecking, whatever the outcome
  if (generation != generation_) return Check::kRetry;  // Distrust reset every chunk
  if (crc.ok() && *crc == crcs_[c]) {
    state_[c].store(kChecked, std::memory_order_release);
    return Check::kDone;
  }
  state_[c].store(kUnchecked);
  if (!crc.ok()) return crc.status();
  if (from_sidecar_) return Check::kMismatch;
  lock.unlock();
  return Fail("CRC-32 mismatch in bytes [" + std::to_string(c * kChunkBytes) + ", +" +
              std::to_string(kChunkBytes) + "): the data changed since it was verified");
}

void StoredMember::CheckAhead(uint64_t offset, size_t n, uint64_t last) {
  if (sequential_.Note(offset, n) < SequentialRun::kStreaming) return;
  const uint64_t end = std::min(chunks_, last + 1 + kCheckAheadChunks);
  uint64_t handed = ahead_end_.load();
  // Already handed out up to here (a reader that went back far starts again behind).
  if (handed >= end && handed <= end + kCheckAheadChunks) return;
  if (!ahead_end_.compare_exchange_strong(handed, end)) return;  // another thread just did
  uint64_t first = handed > last && handed < end ? handed : last + 1;
  while (first < end && state_[first].load(std::memory_order_acquire) == kChecked) ++first;
  if (first >= end) return;  // nothing to check (a pass checked every chunk, say)
  std::weak_ptr<StoredMember> weak = weak_from_this();
  VerifyPool().Submit([weak, first, end] { AheadTask(weak, first, end); });
}

void StoredMember::AheadTask(std::weak_ptr<StoredMember> weak, uint64_t first, uint64_t end) {
  std::shared_ptr<StoredMember> self = weak.lock();
  if (!self) return;
  for (uint64_t c = first; c < end; ++c) {
    {
      std::lock_guard<std::mutex> lock(self->mu_);
      if (self->cancel_) return;
    }
    // A mismatch or an error is left for the reader, who finds it on its own path.
    Result<Check> check = self->CheckChunk(c, /*wait=*/false);
    if (!check.ok() || *check == Check::kMismatch || *check == Check::kRetry) return;
  }
}

Status StoredMember::Fail(const std::string& why) {
  Status s = Status::Error(EIO, name_ + ": " + why);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!failed_.ok()) return failed_;
    failed_ = s;
    pass_ = Pass::kFailed;
    pass_cv_.notify_all();
  }
  shared_->Log(s.message());
  return s;
}

void StoredMember::ForgetChecks(uint64_t epoch) {
  std::lock_guard<std::mutex> lock(mu_);
  if (seen_epoch_.load(std::memory_order_relaxed) >= epoch) return;  // another thread did
  seen_epoch_.store(epoch, std::memory_order_release);
  ++generation_;  // a check under way when the archive changed counts for nothing
  for (uint64_t c = 0; c < chunks_; ++c) state_[c].store(kUnchecked);
  ahead_end_.store(0);
  check_cv_.notify_all();
}

void StoredMember::Distrust(uint64_t c) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!from_sidecar_ || pass_ != Pass::kDone) return;  // another thread got here first
    suspect_chunk_.store(c, std::memory_order_release);
    from_sidecar_ = false;
    pass_ = Pass::kNotStarted;
    next_chunk_ = 0;
    running_crc_ = 0;
    ++generation_;
    for (uint64_t c = 0; c < chunks_; ++c) state_[c].store(kUnchecked);
    check_cv_.notify_all();
  }
  shared_->Log(name_ +
               ": a chunk does not match the CRC-32 saved in the index: the saved record is "
               "dropped and the member is verified again");
}

std::optional<StoredMember::Record> StoredMember::TakeRecord() const {
  std::lock_guard<std::mutex> lock(mu_);
  if (pass_ != Pass::kDone) return std::nullopt;
  return Record{crcs_, version_};
}

void StoredMember::Load(std::vector<uint32_t> chunk_crcs) {
  std::lock_guard<std::mutex> lock(mu_);
  if (chunk_crcs.size() != chunks_ || pass_ != Pass::kNotStarted) return;
  crcs_ = std::move(chunk_crcs);
  pass_ = Pass::kDone;
  from_sidecar_ = true;
  next_chunk_ = chunks_;
  running_crc_ = entry_.crc32;
}

bool StoredMember::dirty() const {
  std::lock_guard<std::mutex> lock(mu_);
  return pass_ == Pass::kDone && version_ != saved_version_;
}

void StoredMember::MarkSaved(uint64_t version) {
  std::lock_guard<std::mutex> lock(mu_);
  saved_version_ = std::max(saved_version_, version);
}

void StoredMember::Cancel() {
  std::unique_lock<std::mutex> lock(mu_);
  cancel_ = true;
  pass_cv_.wait(lock, [&] { return !step_running_; });
}

}  // namespace npzfs
