// The first pass of a deflated member: zlib with Z_BLOCK finds checkpoints (block
// boundaries, or cuts inside huge blocks), their sparse windows and the span CRCs; run by a
// reader for the first span, by BuildIndex, and by the background indexer behind the fast
// path. Design: deflated_member.h and inflate_index.cc.
#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstring>

#include "core/base/crc32.h"
#include "core/read/deflated_member.h"
#include "core/read/index_file.h"
#include "core/read/read_pools.h"

namespace npzfs {

Result<std::unique_ptr<InflateStream>> DeflatedMember::StreamAt(const Checkpoint& cp,
                                                                bool track_blocks,
                                                                uint64_t generation) {
  if (std::unique_ptr<InflateStream> s = shared_->pool.Take(StreamKey(generation), cp.out)) {
    if (s->tracks_blocks() || !track_blocks) return s;
  }
  NPZ_ASSIGN_OR_RETURN(std::unique_ptr<InflateStream> s,
                       InflateStream::Create(source_, track_blocks));
  NPZ_RETURN_IF_ERROR(s->Restore(cp));
  return s;
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

Status DeflatedMember::IndexUpTo(uint64_t offset) {
  while (true) {
    {
      std::lock_guard<std::mutex> lock(index_mu_);
      if (!corrupt_.ok()) return corrupt_;
      if (complete_ || checkpoints_.back().out >= offset) return Status::Ok();
    }
    Result<std::optional<SpanRef>> r = AdvanceFrontier(offset, false, {});
    if (!r.ok() && r.status().code() != EAGAIN) return r.status();
  }
}

Result<DeflatedMember::NewSpan> DeflatedMember::InflateSpan(InflateStream& stream,
                                                            const Checkpoint& cp) {
  // One byte more than the directory allows, to notice a member longer than it says.
  const uint64_t limit = size() - std::min(size(), cp.out) + 1;
  const uint64_t min_len = MinSpanLength(cp, spacing_);
  const size_t cut_at = static_cast<size_t>(std::min<uint64_t>(2 * min_len, limit));
  NewSpan span;
  NPZ_ASSIGN_OR_RETURN(span.buf, AllocateSpanBuffer(static_cast<size_t>(
                                     std::min<uint64_t>(2 * min_len + kMaxStoredBlock, limit))));
  const size_t cap =
      static_cast<size_t>(std::min<uint64_t>(span.buf.get_deleter().capacity, limit));
  size_t& len = span.len;
  while (len < cap) {
    const size_t want = (len < cut_at ? cut_at : cap) - len;
    NPZ_ASSIGN_OR_RETURN(size_t got, stream.Read(span.buf.get() + len, want, true));
    len += got;
    if (stream.ended()) return span;
    if (stream.at_boundary()) {
      if (len >= min_len) {
        span.next = stream.Position();
        return span;
      }
      continue;
    }
    if (len == cut_at && cut_at < limit) {
      // A block longer than 2 * min_len: cut it at the code being decoded, so no span
      // outgrows the bound. In a stored block (at most 65535 bytes) read on to its end.
      if (auto code = stream.CodePosition()) {
        len -= code->second;
        stream.Unread(span.buf.get() + len, code->second);
        span.next = code->first;
        return span;
      }
    }
  }
  if (cp.out + len > size())
    return Bad("the deflate data is longer than the size in the directory");
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
    return EndsEarly(start + span.len);
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
    whole_crc = Crc32Combine(prefix_crcs_[k], crc, span.len);
    if (span.next.has_value()) {
      checkpoints_.push_back(std::move(*span.next));
      prefix_crcs_.push_back(whole_crc);
    } else {
      crc_ok = whole_crc == entry_.crc32 || shared_->verify == VerifyMode::kOff;
      // A member whose CRC-32 fails is never complete: no reader may find its last span
      // known (and cached) before the failure below is recorded.
      complete_ = crc_ok;
    }
    ++version_;
  }
  // Cached right after publishing: a reader that finds the span known finds it cached,
  // unless evicted (then it is inflated again from its checkpoint).
  if (fill_cache && crc_ok) shared_->cache.Insert(SpanKey{id_, generation, k}, shared_span);
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

Status DeflatedMember::FirstPassFailed(std::unique_lock<std::mutex>& frontier, Status s,
                                       uint64_t generation) {
  frontier.unlock();
  if (s.code() != EIO) return s;
  // A first pass that resumed from saved checkpoints may have been misled by them. Judged
  // by the generation the pass ran under: if a reader distrusted those checkpoints since
  // (the generation moved on), this failure says nothing about the data.
  return FailOrDistrust(generation, s);
}

Result<std::optional<DeflatedMember::SpanRef>> DeflatedMember::AdvanceFrontier(
    uint64_t target, bool fill_cache, const std::function<void(uint64_t, uint64_t)>& progress) {
  std::unique_lock<std::mutex> frontier(frontier_mu_);
  std::unique_ptr<InflateStream> stream;
  uint64_t generation = 0;
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
      generation = generation_;  // stable: Distrust and Load take frontier_mu_ too
    }
    if (stream == nullptr || stream->resume_pos() != cp.out) {
      Result<std::unique_ptr<InflateStream>> s = StreamAt(cp, /*track_blocks=*/true, generation);
      if (!s.ok()) return FirstPassFailed(frontier, s.status(), generation);
      stream = std::move(s).value();
    }
    Result<NewSpan> span = InflateSpan(*stream, cp);
    Status s = span.ok() && span->next.has_value() ? MakeWindow(*stream, *span) : span.status();
    if (!s.ok()) return FirstPassFailed(frontier, s, generation);
    const uint64_t end = cp.out + span->len;
    const bool last = !span->next.has_value();
    Result<SpanPtr> published = PublishSpan(k, cp.out, std::move(span).value(), fill_cache);
    if (!published.ok()) return FirstPassFailed(frontier, published.status(), generation);
    if (progress) progress(end, size());
    if (target < end || last) {
      frontier.unlock();
      shared_->pool.Park(StreamKey(generation), std::move(stream));
      return std::optional<SpanRef>(SpanRef{std::move(published).value(), cp.out});
    }
  }
}

void DeflatedMember::StartIndexer() {
  if (!shared_->background_index) return;
  {
    std::lock_guard<std::mutex> lock(indexer_mu_);
    if (indexer_running_ || cancel_) return;
    indexer_running_ = true;
    indexer_started_ = true;
  }
  std::weak_ptr<DeflatedMember> weak = weak_from_this();
  IndexPool().Submit([weak] { IndexerStep(weak); });
}

void DeflatedMember::IndexerStep(std::weak_ptr<DeflatedMember> weak) {
  if (std::shared_ptr<DeflatedMember> self = weak.lock()) self->RunIndexerStep();
}

void DeflatedMember::RunIndexerStep() {
  {
    std::lock_guard<std::mutex> lock(indexer_mu_);
    if (cancel_) {
      indexer_running_ = false;
      indexer_cv_.notify_all();
      return;
    }
    indexer_step_running_ = true;
  }
  // One span per step, so the pool's other work (read-ahead, other members) takes turns.
  bool done = false;
  uint64_t target = 0;
  {
    std::lock_guard<std::mutex> lock(index_mu_);
    done = complete_ || !corrupt_.ok();
    target = checkpoints_.back().out;
  }
  if (!done) {
    Result<std::optional<SpanRef>> r = AdvanceFrontier(target, false, {});
    if (!r.ok() && r.status().code() != EAGAIN) done = true;
    uint64_t frontier = 0, generation = 0;
    {
      std::lock_guard<std::mutex> lock(index_mu_);
      done = done || complete_;
      frontier = complete_ ? UINT64_MAX : checkpoints_.back().out;
      generation = generation_;
    }
    shared_->snapshots.DropUpTo(StreamKey(generation), frontier);  // checkpoints cover them
  }
  bool more = false;
  {
    std::lock_guard<std::mutex> lock(indexer_mu_);
    indexer_step_running_ = false;
    if (done || cancel_) indexer_running_ = false;
    more = indexer_running_;
    indexer_cv_.notify_all();
  }
  if (more) {
    std::weak_ptr<DeflatedMember> weak = weak_from_this();
    IndexPool().Submit([weak] { IndexerStep(weak); });
  }
}

bool DeflatedMember::indexer_started() const {
  std::lock_guard<std::mutex> lock(indexer_mu_);
  return indexer_started_;
}

void DeflatedMember::Cancel() {
  std::unique_lock<std::mutex> lock(indexer_mu_);
  cancel_ = true;
  indexer_cv_.wait(lock, [&] { return !indexer_step_running_; });
}

}  // namespace npzfs
