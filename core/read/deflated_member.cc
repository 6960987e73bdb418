// A deflated member's shared state: reads through the span cache, the first pass that
// learns checkpoints, and spans decoded from known checkpoints. The random-access design is
// explained at the top of core/read/inflate_index.cc; the lock order in deflated_member.h.
#include "core/read/deflated_member.h"

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstring>

#include "core/read/crc32.h"
#include "core/read/index_file.h"

namespace npzfs {

DeflatedMember::DeflatedMember(std::shared_ptr<ArchiveShared> shared, uint64_t id,
                               std::string member_path, const ZipEntry& entry, uint64_t spacing)
    : shared_(std::move(shared)),
      id_(id),
      member_path_(std::move(member_path)),
      entry_(entry),
      spacing_(std::clamp<uint64_t>(spacing, kMinSpacing, kMaxSpacing)),
      source_{shared_->fd.get(), entry.data_offset, entry.compressed_size,
              shared_->path + ": member " + member_path_} {
  checkpoints_.push_back(Checkpoint{});
}

Status DeflatedMember::Corrupt(const std::string& why) {
  return MarkCorrupt(Status::Error(EIO, source_.name + ": " + why));
}

Status DeflatedMember::MarkCorrupt(Status s) {
  {
    std::lock_guard<std::mutex> lock(index_mu_);
    if (!corrupt_.ok()) return corrupt_;
    corrupt_ = s;
  }
  shared_->Log(s.message());
  return s;
}

bool DeflatedMember::complete() const {
  std::lock_guard<std::mutex> lock(index_mu_);
  return complete_;
}

size_t DeflatedMember::checkpoint_count() const {
  std::lock_guard<std::mutex> lock(index_mu_);
  return checkpoints_.size();
}

uint64_t DeflatedMember::index_bytes() const {
  std::lock_guard<std::mutex> lock(index_mu_);
  uint64_t total = 0;
  for (const Checkpoint& cp : checkpoints_) total += CheckpointRecordBytes(cp);
  return total;
}

DeflatedMember::Snapshot DeflatedMember::TakeSnapshot() const {
  std::lock_guard<std::mutex> lock(index_mu_);
  Snapshot snap;
  snap.checkpoints = checkpoints_;
  // Under verify=off a member whose CRC-32 mismatched is served, but its index is not
  // worth keeping: its span CRCs would not add up on load.
  snap.complete = complete_ && crc_so_far_ == entry_.crc32;
  if (complete_ && !snap.complete) snap.checkpoints.resize(1);
  snap.version = version_;
  return snap;
}

void DeflatedMember::MarkSaved(uint64_t version) {
  std::lock_guard<std::mutex> lock(index_mu_);
  saved_version_ = std::max(saved_version_, version);
}

bool DeflatedMember::dirty() const {
  std::lock_guard<std::mutex> lock(index_mu_);
  return version_ != saved_version_;
}

void DeflatedMember::Load(std::vector<Checkpoint> checkpoints, bool complete) {
  std::lock_guard<std::mutex> frontier(frontier_mu_);
  std::lock_guard<std::mutex> lock(index_mu_);
  checkpoints_ = std::move(checkpoints);
  complete_ = complete;
  crc_so_far_ = 0;
  for (size_t k = 0; k + 1 < checkpoints_.size(); ++k) {
    crc_so_far_ = Crc32Combine(crc_so_far_, checkpoints_[k].span_crc,
                               checkpoints_[k + 1].out - checkpoints_[k].out);
  }
  if (complete_) crc_so_far_ = entry_.crc32;  // checked on load: the span CRCs add up
  from_sidecar_ = true;
}

Status DeflatedMember::Distrust(uint64_t generation, const Status& failure) {
  std::string what;
  {
    std::lock_guard<std::mutex> frontier(frontier_mu_);
    std::lock_guard<std::mutex> lock(index_mu_);
    if (generation != generation_) return Status::Error(EAGAIN, "index replaced");
    if (!from_sidecar_ || !corrupt_.ok()) return failure;
    checkpoints_.assign(1, Checkpoint{});
    complete_ = false;
    crc_so_far_ = 0;
    from_sidecar_ = false;
    ++generation_;
    ++version_;  // the next save drops the bad record
  }
  shared_->Log(failure.message() +
               " (reading from a checkpoint saved in the index: the saved checkpoints are "
               "dropped and rebuilt from the data)");
  return Status::Error(EAGAIN, "index replaced");
}

Result<std::unique_ptr<InflateStream>> DeflatedMember::StreamAt(const Checkpoint& cp,
                                                                bool track_blocks) {
  if (std::unique_ptr<InflateStream> s = shared_->pool.Take(id_, cp.out)) {
    if (s->tracks_blocks() || !track_blocks) return s;
  }
  NPZ_ASSIGN_OR_RETURN(std::unique_ptr<InflateStream> s,
                       InflateStream::Create(source_, track_blocks));
  NPZ_RETURN_IF_ERROR(s->Restore(cp));
  return s;
}

Result<size_t> DeflatedMember::ReadAt(uint64_t offset, std::span<std::byte> dest) {
  NPZ_RETURN_IF_ERROR(shared_->CheckUnchanged());
  if (shared_->verify == VerifyMode::kStrict) {
    // Nothing is served before the whole member's CRC-32 was checked.
    NPZ_RETURN_IF_ERROR(BuildIndex({}));
  }
  if (offset >= size() || dest.empty()) {
    std::lock_guard<std::mutex> lock(index_mu_);
    if (!corrupt_.ok()) return corrupt_;
    return size_t{0};
  }
  const size_t n = static_cast<size_t>(std::min<uint64_t>(dest.size(), size() - offset));
  size_t done = 0;
  while (done < n) {
    const uint64_t pos = offset + done;
    NPZ_ASSIGN_OR_RETURN(SpanRef ref, SpanAt(pos));
    const uint64_t within = pos - ref.start;
    if (within >= ref.span->size) {
      return Corrupt("the deflate data ends before the size in the directory");
    }
    const size_t take = static_cast<size_t>(std::min<uint64_t>(ref.span->size - within, n - done));
    std::memcpy(dest.data() + done, ref.span->data.get() + within, take);
    done += take;
  }
  return done;
}

Result<DeflatedMember::SpanRef> DeflatedMember::SpanAt(uint64_t pos) {
  while (true) {
    size_t k = 0;
    bool known = false;
    uint64_t start = 0;
    uint64_t generation = 0;
    {
      std::lock_guard<std::mutex> lock(index_mu_);
      if (!corrupt_.ok()) return corrupt_;
      auto it = std::upper_bound(checkpoints_.begin(), checkpoints_.end(), pos,
                                 [](uint64_t p, const Checkpoint& cp) { return p < cp.out; });
      k = static_cast<size_t>(it - checkpoints_.begin()) - 1;
      known = complete_ || k + 1 < checkpoints_.size();
      start = checkpoints_[k].out;
      generation = generation_;
    }
    if (known) {
      Result<SpanPtr> span = shared_->cache.GetOrProduce(
          SpanKey{id_, generation, k}, [&] { return ProduceKnownSpan(k, generation); });
      if (span.ok()) return SpanRef{std::move(span).value(), start};
      if (span.status().code() != EAGAIN) return span.status();
      continue;  // the checkpoints were replaced meanwhile: look up again
    }
    Result<std::optional<SpanRef>> ref = AdvanceFrontier(pos, true, {});
    if (!ref.ok() && ref.status().code() != EAGAIN) return ref.status();
    if (ref.ok() && ref->has_value()) return **std::move(ref);
  }
}

Result<SpanPtr> DeflatedMember::ProduceKnownSpan(size_t k, uint64_t generation) {
  Checkpoint cp;
  uint64_t end = 0;
  {
    std::lock_guard<std::mutex> lock(index_mu_);
    if (generation != generation_) return Status::Error(EAGAIN, source_.name + ": index replaced");
    cp = checkpoints_[k];
    end = k + 1 < checkpoints_.size() ? checkpoints_[k + 1].out : size();
  }
  const size_t len = static_cast<size_t>(end - cp.out);
  NPZ_ASSIGN_OR_RETURN(auto buf, AllocateSpanBuffer(len));
  Result<size_t> got = DecodeSpan(cp, buf.get(), len);
  Status failure = got.ok() ? Status::Ok() : got.status();
  if (failure.ok() && *got != len) {
    failure = Status::Error(EIO, source_.name + ": the deflate data ends early in the span at " +
                                     std::to_string(cp.out));
  }
  if (failure.ok() && shared_->verify != VerifyMode::kOff &&
      Crc32(0, buf.get(), len) != cp.span_crc) {
    failure = Status::Error(
        EIO, source_.name + ": CRC-32 mismatch in the span at offset " + std::to_string(cp.out));
  }
  if (!failure.ok()) {
    if (failure.code() != EIO) return failure;
    NPZ_RETURN_IF_ERROR(Distrust(generation, failure));  // EAGAIN: the pass rebuilds them
    return MarkCorrupt(failure);
  }
  auto span = std::make_shared<Span>();
  span->data = std::move(buf);
  span->size = len;
  return SpanPtr(std::move(span));
}

Result<size_t> DeflatedMember::DecodeSpan(const Checkpoint& cp, std::byte* out, size_t len) {
  if (cp.at_block_start()) {  // the fast engine
    std::unique_ptr<DecodeStream> stream = shared_->fast_pool.Take(id_, cp.out);
    if (stream == nullptr) {
      NPZ_ASSIGN_OR_RETURN(stream, DecodeStream::Create(source_));
      NPZ_RETURN_IF_ERROR(stream->Restore(cp, std::nullopt));
    }
    NPZ_ASSIGN_OR_RETURN(size_t got, stream->Read(out, len));
    shared_->fast_pool.Park(id_, std::move(stream));
    return got;
  }
  // Inside a block: only zlib resumes there.
  NPZ_ASSIGN_OR_RETURN(std::unique_ptr<InflateStream> stream, StreamAt(cp, false));
  NPZ_ASSIGN_OR_RETURN(size_t got, stream->Read(out, len, /*stop_at_block=*/false));
  shared_->pool.Park(id_, std::move(stream));
  return got;
}

Status DeflatedMember::BuildIndex(const std::function<void(uint64_t, uint64_t)>& progress) {
  while (true) {
    {
      std::lock_guard<std::mutex> lock(index_mu_);
      if (!corrupt_.ok()) return corrupt_;
      if (complete_) return Status::Ok();
    }
    Result<std::optional<SpanRef>> r = AdvanceFrontier(UINT64_MAX, false, progress);
    if (!r.ok() && r.status().code() != EAGAIN) return r.status();
  }
}

Result<DeflatedMember::NewSpan> DeflatedMember::InflateSpan(InflateStream& stream,
                                                            const Checkpoint& cp) {
  // One byte more than the directory allows, to notice a member longer than it says.
  const uint64_t limit = size() - std::min(size(), cp.out) + 1;
  const size_t cut_at = static_cast<size_t>(std::min<uint64_t>(2 * spacing_, limit));
  NewSpan span;
  NPZ_ASSIGN_OR_RETURN(span.buf, AllocateSpanBuffer(static_cast<size_t>(
                                     std::min<uint64_t>(2 * spacing_ + kMaxStoredBlock, limit))));
  const size_t cap =
      static_cast<size_t>(std::min<uint64_t>(span.buf.get_deleter().capacity, limit));
  size_t& len = span.len;
  while (len < cap) {
    const size_t want = (len < cut_at ? cut_at : cap) - len;
    NPZ_ASSIGN_OR_RETURN(size_t got, stream.Read(span.buf.get() + len, want, true));
    len += got;
    if (stream.ended()) return span;
    if (stream.at_boundary()) {
      if (len >= spacing_) {
        span.next = stream.Position();
        return span;
      }
      continue;
    }
    if (len == cut_at && cut_at < limit) {
      // A block longer than 2 * spacing_: cut it at the code being decoded, so no span
      // outgrows the bound. In a stored block (at most 65535 bytes) read on to its end.
      if (auto code = stream.CodePosition()) {
        len -= code->second;
        stream.Unread(span.buf.get() + len, code->second);
        span.next = code->first;
        return span;
      }
    }
  }
  if (cp.out + len > size()) {
    return Bad("the deflate data is longer than the size in the directory");
  }
  return Bad("a stored deflate block longer than 65535 bytes");
}

Status DeflatedMember::MakeWindow(InflateStream& stream, NewSpan& span) {
  Checkpoint& next = *span.next;
  thread_local std::unique_ptr<std::byte[]> window =
      std::make_unique_for_overwrite<std::byte[]>(kDeflateWindow);
  uint32_t wlen = 0;
  if (next.at_block_start()) {
    wlen = stream.Window(window.get());
  } else {
    // Cut inside a block: zlib's window runs past the cut; the span holds what precedes it.
    wlen = static_cast<uint32_t>(std::min<uint64_t>(kDeflateWindow, span.len));
    std::memcpy(window.get(), span.buf.get() + span.len - wlen, wlen);
  }
  NPZ_ASSIGN_OR_RETURN(std::span<const std::byte> ahead, stream.FillLookahead());
  if (ahead.empty() && stream.ended()) {  // the stream ends right at this boundary
    span.next.reset();
    return Status::Ok();
  }
  NPZ_ASSIGN_OR_RETURN(next.window,
                       MakeSparseWindow(source_, next, std::span(window.get(), wlen), ahead));
  next.window_size = wlen;
  return Status::Ok();
}

Result<SpanPtr> DeflatedMember::PublishSpan(size_t k, uint64_t start, NewSpan span,
                                            bool fill_cache) {
  if (!span.next.has_value() && start + span.len != size()) {
    return Bad("the deflate data ends before the size in the directory (" +
               std::to_string(start + span.len) + " of " + std::to_string(size()) + " bytes)");
  }
  const uint32_t crc = Crc32(0, span.buf.get(), span.len);
  auto made = std::make_shared<Span>();
  made->data = std::move(span.buf);
  made->size = span.len;
  SpanPtr shared_span = std::move(made);
  bool crc_ok = true;
  uint32_t whole_crc = 0;
  uint64_t generation = 0;
  {
    std::lock_guard<std::mutex> lock(index_mu_);
    generation = generation_;
    checkpoints_[k].span_crc = crc;
    crc_so_far_ = Crc32Combine(crc_so_far_, crc, span.len);
    if (span.next.has_value()) {
      checkpoints_.push_back(std::move(*span.next));
    } else {
      complete_ = true;
      crc_ok = crc_so_far_ == entry_.crc32 || shared_->verify == VerifyMode::kOff;
      whole_crc = crc_so_far_;
    }
    ++version_;
  }
  // Cached right after publishing: a reader that finds the span known finds it cached,
  // unless evicted (then it is inflated again from its checkpoint).
  if (fill_cache) shared_->cache.Insert(SpanKey{id_, generation, k}, shared_span);
  first_pass_spans_.fetch_add(1);
  if (!crc_ok) {
    char text[64];
    std::snprintf(text, sizeof text,
                  "CRC-32 mismatch (directory %08" PRIx32 ", data %08" PRIx32 ")", entry_.crc32,
                  whole_crc);
    return Bad(text);
  }
  return shared_span;
}

Status DeflatedMember::Bad(const std::string& why) const {
  return Status::Error(EIO, source_.name + ": " + why);
}

Status DeflatedMember::FirstPassFailed(std::unique_lock<std::mutex>& frontier, Status s) {
  frontier.unlock();
  if (s.code() != EIO) return s;
  uint64_t generation = 0;
  {
    std::lock_guard<std::mutex> lock(index_mu_);
    generation = generation_;
  }
  // A first pass that resumed from saved checkpoints may have been misled by them.
  Status distrusted = Distrust(generation, s);
  if (distrusted.code() == EAGAIN) return distrusted;
  return MarkCorrupt(s);
}

Result<std::optional<DeflatedMember::SpanRef>> DeflatedMember::AdvanceFrontier(
    uint64_t target, bool fill_cache, const std::function<void(uint64_t, uint64_t)>& progress) {
  std::unique_lock<std::mutex> frontier(frontier_mu_);
  std::unique_ptr<InflateStream> stream;
  while (true) {
    Checkpoint cp;
    size_t k = 0;
    {
      std::lock_guard<std::mutex> lock(index_mu_);
      if (!corrupt_.ok()) return corrupt_;
      if (complete_) return std::optional<SpanRef>();
      k = checkpoints_.size() - 1;
      // Another thread got there: look up again.
      if (target < checkpoints_[k].out) return std::optional<SpanRef>();
      cp = checkpoints_[k];
    }
    if (stream == nullptr || stream->resume_pos() != cp.out) {
      // Resuming from a saved checkpoint can fail on its window: that distrusts the sidecar
      // too, like any other failure of the pass.
      Result<std::unique_ptr<InflateStream>> restored = StreamAt(cp, /*track_blocks=*/true);
      if (!restored.ok()) return FirstPassFailed(frontier, restored.status());
      stream = std::move(restored).value();
    }
    Result<NewSpan> span = InflateSpan(*stream, cp);
    Status s = span.ok() && span->next.has_value() ? MakeWindow(*stream, *span) : span.status();
    if (!s.ok()) return FirstPassFailed(frontier, s);
    const uint64_t end = cp.out + span->len;
    const bool last = !span->next.has_value();
    Result<SpanPtr> published = PublishSpan(k, cp.out, std::move(span).value(), fill_cache);
    if (!published.ok()) return FirstPassFailed(frontier, published.status());
    if (progress) progress(end, size());
    if (target < end || last) {
      frontier.unlock();
      shared_->pool.Park(id_, std::move(stream));
      return std::optional<SpanRef>(SpanRef{std::move(published).value(), cp.out});
    }
  }
}

}  // namespace npzfs
