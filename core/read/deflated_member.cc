// A deflated member's shared state: reads, known spans and their read-ahead, the index's
// bookkeeping, failures and distrust. The design is at the top of deflated_member.h; the
// first pass is in first_pass.cc, the fast path in fast_path.cc.
#include "core/read/deflated_member.h"

#include <algorithm>
#include <cstring>

#include "core/base/crc32.h"
#include "core/read/index_file.h"
#include "core/read/read_pools.h"

namespace npzfs {
namespace {

// Read-ahead of a streaming reader, in spans: at most this many (also bounded by the pool
// size and a quarter of the cache).
constexpr size_t kFullReadAhead = SIZE_MAX;
// A request this large comes from the kernel's page cache (readahead, or the read-around of
// an mmap page fault), not from a small pread: the object being read most likely goes on
// past it, so the next span is decoded at once, side by side with this one.
constexpr size_t kPageCacheRequest = 128 << 10;

}  // namespace

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
  prefix_crcs_.push_back(0);
}

Status DeflatedMember::Bad(const std::string& why) const {
  return Status::Error(EIO, source_.name + ": " + why);
}

Status DeflatedMember::EndsEarly(uint64_t at) const {
  return Bad("the deflate data ends before the size in the directory (" + std::to_string(at) +
             " of " + std::to_string(size()) + " bytes)");
}

Status DeflatedMember::Corrupt(const std::string& why) { return MarkCorrupt(Bad(why)); }

Status DeflatedMember::MarkCorrupt(Status s) {
  {
    std::lock_guard<std::mutex> lock(index_mu_);
    if (!corrupt_.ok()) return corrupt_;
    corrupt_ = s;
    ++version_;  // the next save drops the record (TakeSnapshot)
  }
  shared_->Log(s.message());
  return s;
}

bool DeflatedMember::complete() const {
  std::lock_guard<std::mutex> lock(index_mu_);
  return complete_;
}

Status DeflatedMember::corruption() const {
  std::lock_guard<std::mutex> lock(index_mu_);
  return corrupt_;
}

size_t DeflatedMember::checkpoint_count() const {
  std::lock_guard<std::mutex> lock(index_mu_);
  return checkpoints_.size();
}

uint64_t DeflatedMember::indexed_bytes() const {
  std::lock_guard<std::mutex> lock(index_mu_);
  return checkpoints_.empty() ? 0 : checkpoints_.back().out;
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
  snap.complete = complete_;
  if (!corrupt_.ok()) {
    // Checkpoints and span CRCs learned from data found bad: a later mount would serve the
    // damaged spans as checked ones. Nothing is kept (the next mount finds the damage again).
    snap.checkpoints.resize(1);
    snap.version = version_;
    return snap;
  }
  if (complete_) {
    // Under verify=off a member whose CRC-32 mismatched is served, but its index is not
    // worth keeping: its span CRCs would not add up on load.
    const Checkpoint& last = checkpoints_.back();
    const uint32_t whole = Crc32Combine(prefix_crcs_.back(), last.span_crc, size() - last.out);
    if (whole != entry_.crc32) {
      snap.complete = false;
      snap.checkpoints.resize(1);
    }
  }
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
  prefix_crcs_.assign(1, 0);
  for (size_t k = 0; k + 1 < checkpoints_.size(); ++k) {
    prefix_crcs_.push_back(Crc32Combine(prefix_crcs_.back(), checkpoints_[k].span_crc,
                                        checkpoints_[k + 1].out - checkpoints_[k].out));
  }
  from_saved_ = true;
  seekable_ = false;  // a record exists only if the member's seek table was distrusted
}

bool DeflatedMember::UseSeekTable(const SeekTable& table) {
  std::vector<Checkpoint> cps;
  for (const SeekChunk& chunk : table.chunks()) {
    if (chunk.out_size > kMaxSpanBytes) return false;
    Checkpoint cp;
    cp.out = chunk.out;
    cp.in = chunk.in;
    cp.header_bit = chunk.in * 8;  // a block starts here, byte-aligned
    cp.span_crc = chunk.crc32;
    cps.push_back(std::move(cp));  // window_size 0: the chunk refers to nothing before it
  }
  std::lock_guard<std::mutex> frontier(frontier_mu_);
  std::lock_guard<std::mutex> lock(index_mu_);
  checkpoints_ = std::move(cps);
  prefix_crcs_.assign(1, 0);
  for (size_t k = 0; k + 1 < checkpoints_.size(); ++k) {
    prefix_crcs_.push_back(Crc32Combine(prefix_crcs_.back(), checkpoints_[k].span_crc,
                                        checkpoints_[k + 1].out - checkpoints_[k].out));
  }
  complete_ = true;
  from_saved_ = true;
  seekable_ = true;
  return true;
}

bool DeflatedMember::seekable() const {
  std::lock_guard<std::mutex> lock(index_mu_);
  return seekable_;
}

Status DeflatedMember::Distrust(uint64_t generation, const Status& failure) {
  {
    std::lock_guard<std::mutex> frontier(frontier_mu_);
    std::lock_guard<std::mutex> lock(index_mu_);
    if (generation != generation_) return Status::Error(EAGAIN, "index replaced");
    if (!from_saved_ || !corrupt_.ok()) return failure;
    checkpoints_.assign(1, Checkpoint{});
    prefix_crcs_.assign(1, 0);
    complete_ = false;
    from_saved_ = false;
    seekable_ = false;
    distrusted_ = true;
    ++generation_;
    ++version_;  // the next save drops the bad record
  }
  // Resume points made from the distrusted checkpoints go too (they are keyed by the old
  // generation, so none is ever used again; this frees them).
  shared_->snapshots.DropUpTo(StreamKey(generation), UINT64_MAX);
  shared_->fast_pool.Forget(StreamKey(generation));
  shared_->pool.Forget(StreamKey(generation));
  shared_->Log(failure.message() +
               " (reading from a checkpoint of the saved index or the seek table: those "
               "checkpoints are dropped and rebuilt from the data; reads wait until the "
               "member's CRC-32 is checked)");
  return Status::Error(EAGAIN, "index replaced");
}

Status DeflatedMember::FailOrDistrust(uint64_t generation, const Status& failure) {
  if (failure.code() != EIO) return failure;
  // The archive ended before bytes its directory placed inside it (it was checked at open):
  // it is being overwritten in place, and says nothing about this member's bytes. EIO for
  // this read only; once the archive is as it was, the member reads again.
  if (failure.cause() == Status::Cause::kUnexpectedEndOfFile) return failure;
  Status distrusted = Distrust(generation, failure);
  if (distrusted.code() == EAGAIN) return distrusted;
  return MarkCorrupt(failure);
}

Result<size_t> DeflatedMember::ReadAt(uint64_t offset, std::span<std::byte> dest) {
  return Gather(offset, dest.size(),
                [&](const SpanRef& ref, uint64_t within, size_t take, size_t done) {
                  std::memcpy(dest.data() + done, ref.span->data.get() + within, take);
                });
}

Result<ReadAnswer> DeflatedMember::ReadHeld(uint64_t offset, size_t max) {
  ReadAnswer answer;
  NPZ_ASSIGN_OR_RETURN(
      answer.length,
      Gather(offset, max, [&](const SpanRef& ref, uint64_t within, size_t take, size_t /*done*/) {
        answer.pieces.emplace_back(ref.span->data.get() + within, take);
        answer.hold.push_back(ref.span);
      }));
  return answer;
}

Result<size_t> DeflatedMember::Gather(uint64_t offset, size_t max, const GatherSink& sink) {
  NPZ_RETURN_IF_ERROR(shared_->CheckUnchanged());
  if (shared_->verify == VerifyMode::kStrict) {
    // Nothing is served before the whole member's CRC-32 was checked (see SpanAt too).
    NPZ_RETURN_IF_ERROR(BuildIndex({}));
  }
  if (offset >= size() || max == 0) {
    std::lock_guard<std::mutex> lock(index_mu_);
    if (!corrupt_.ok()) return corrupt_;
    return size_t{0};
  }
  const size_t n = static_cast<size_t>(std::min<uint64_t>(max, size() - offset));
  // Read-ahead only for a reader that has read sequentially for a while: the kernel's own
  // readahead already rounds up small and mmap reads, and decoding ahead of a random
  // reader wastes a core.
  const uint64_t run = sequential_.Note(offset, n);
  // How far ahead to decode: nothing for a lone small read; the next span or chunk once a
  // read has gone on in order (a frame read in 128 KiB requests, say) or for a request the
  // size of the kernel's readahead; a full pipeline for a stream.
  const size_t ahead = run >= SequentialRun::kStreaming                ? kFullReadAhead
                       : run >= spacing_ / 2 || n >= kPageCacheRequest ? 1
                                                                       : 0;
  // A reader of objects (see SequentialRun::typical_run): where it jumps, it most likely
  // reads as far as it did after its last jumps, so the known spans up to there are decoded
  // side by side at once, and while it is inside that length nothing beyond is decoded.
  // Measured on 200 random 512 KiB frames through np.load(mmap_mode='r') (each a run of
  // 768 KiB: the kernel reads 64 KiB around the first fault and 128 KiB past the frame):
  // with 256 KiB spans 0.56 s against 0.64 s, with a seekable member's 1 MiB chunks 0.55 s
  // against 0.73 s, where the span after each frame was decoded for nothing.
  // (Runs of a single request say nothing: a random reader, or readers that interleave,
  // keep the read-ahead above.)
  const uint64_t object = sequential_.typical_run();
  const bool in_object = n >= kPageCacheRequest && object > kPageCacheRequest && run <= object;
  const uint64_t wanted_end = in_object && run == n ? offset + object : offset + n;
  // The known spans this request covers (or its object) beyond its first are decoded side by
  // side with it.
  if (Result<Where> w = Locate(offset); w.ok() && w->known) {
    PrefetchSpans(*w, SpansBefore(*w, wanted_end), shared_->cache.budget() / 4);
  }
  // (The fast path decodes in order on one stream: its lead is unchanged.)
  const size_t fast_lead = std::min<uint64_t>(ahead, kFastLead);
  const size_t spans_ahead = in_object ? 0 : ahead;
  size_t done = 0;
  while (done < n) {
    const uint64_t pos = offset + done;
    NPZ_ASSIGN_OR_RETURN(SpanRef ref, SpanAt(pos, spans_ahead, fast_lead));
    const uint64_t within = pos - ref.start;
    if (within >= ref.span->size) {
      return Corrupt("the deflate data ends before the size in the directory");
    }
    const size_t take = static_cast<size_t>(std::min<uint64_t>(ref.span->size - within, n - done));
    sink(ref, within, take, done);
    done += take;
  }
  return done;
}

Result<DeflatedMember::Where> DeflatedMember::Locate(uint64_t pos) const {
  std::lock_guard<std::mutex> lock(index_mu_);
  if (!corrupt_.ok()) return corrupt_;
  auto it = std::upper_bound(checkpoints_.begin(), checkpoints_.end(), pos,
                             [](uint64_t p, const Checkpoint& cp) { return p < cp.out; });
  Where w;
  w.k = static_cast<size_t>(it - checkpoints_.begin()) - 1;
  w.known = complete_ || w.k + 1 < checkpoints_.size();
  w.start = checkpoints_[w.k].out;
  w.generation = generation_;
  w.check_first = distrusted_ && !complete_;
  return w;
}

size_t DeflatedMember::SpansBefore(const Where& w, uint64_t end) const {
  std::lock_guard<std::mutex> lock(index_mu_);
  if (w.generation != generation_) return 0;
  size_t n = 0;
  for (size_t k = w.k + 1; k < checkpoints_.size() && checkpoints_[k].out < end; ++k) ++n;
  return n;
}

Result<DeflatedMember::SpanRef> DeflatedMember::SpanAt(uint64_t pos, size_t ahead,
                                                       size_t fast_lead) {
  while (true) {
    NPZ_ASSIGN_OR_RETURN(Where w, Locate(pos));
    if (w.check_first) {
      // Saved checkpoints failed against the data, which may be bad: nothing is served
      // until the first pass rebuilt the index and checked the member's CRC-32.
      NPZ_RETURN_IF_ERROR(BuildIndex({}));
      continue;
    }
    Result<SpanRef> ref = Status::Error(EAGAIN, "not yet");
    if (w.known) {
      ref = KnownSpan(w, ahead);
    } else if (pos < spacing_) {
      // The first span: the reader runs the first pass itself (a header read).
      Result<std::optional<SpanRef>> first = AdvanceFrontier(pos, true, {});
      if (!first.ok()) {
        ref = first.status();
      } else if (first->has_value()) {
        ref = **std::move(first);
      }
    } else {
      StartIndexer();
      ref = FastChunkAt(pos, w.generation, fast_lead);
    }
    if (ref.ok() || ref.status().code() != EAGAIN) return ref;
    // EAGAIN: another thread moved the frontier, or the checkpoints were replaced.
  }
}

Result<DeflatedMember::SpanRef> DeflatedMember::KnownSpan(const Where& w, size_t ahead) {
  if (ahead == kFullReadAhead) {
    StreamSpans(w);
  } else if (ahead > 0) {
    // Never more than the pool has threads (and one more), nor a quarter of the cache:
    // spans ahead that do not fit would evict each other before they are read.
    PrefetchSpans(w, std::min<size_t>(ahead, DecodePool().size() + 1), shared_->cache.budget() / 4);
  }
  const uint64_t generation = w.generation;
  const size_t k = w.k;
  Result<SpanPtr> span = shared_->cache.GetOrProduce(
      SpanKey{id_, generation, k}, [&] { return ProduceKnownSpan(k, generation); });
  if (!span.ok()) return span.status();
  return SpanRef{std::move(span).value(), w.start};
}

std::optional<DeflatedMember::Ahead> DeflatedMember::SpansAhead(const Where& w, size_t count,
                                                                uint64_t max_bytes) const {
  std::lock_guard<std::mutex> lock(index_mu_);
  if (w.generation != generation_) return std::nullopt;
  const size_t known = complete_ ? checkpoints_.size() : checkpoints_.size() - 1;
  Ahead ahead{w.k, false};
  uint64_t bytes = 0;
  for (size_t k = w.k + 1; k < known && k <= w.k + count; ++k) {
    const uint64_t end = k + 1 < checkpoints_.size() ? checkpoints_[k + 1].out : size();
    bytes += end - checkpoints_[k].out;
    if (bytes > max_bytes) break;
    ahead.last = k;
  }
  ahead.at_end = ahead.last + 1 == known;
  return ahead;
}

void DeflatedMember::StreamSpans(const Where& w) {
  // A run per pool thread and one more queued, so that no thread waits for the reader to
  // move on before it has a run to decode.
  const size_t runs_ahead = std::max<size_t>(DecodePool().size(), 1) + 1;
  const std::optional<Ahead> ahead =
      SpansAhead(w, runs_ahead * kRunSpans, shared_->cache.budget() / 4);
  if (!ahead.has_value()) return;
  const size_t last = ahead->last;
  // Runs as long as the window allows (a small cache: runs of one span, a plain prefetch).
  const size_t run_spans = std::clamp<size_t>((last - w.k) / runs_ahead, 1, kRunSpans);
  // Each run's claims are held by a guard that goes into its task: whatever throws on the
  // way (a vector here, Submit, the task itself), its keys are failed, never left in flight.
  std::shared_ptr<DeflatedMember> self = shared_from_this();
  std::vector<std::shared_ptr<SpanClaims>> runs;
  {
    std::lock_guard<std::mutex> lock(run_mu_);
    if (run_generation_ != w.generation || run_end_ <= w.k || run_end_ > last + 1) {
      // A new reader, or one that passed the runs or went back: runs start after it.
      run_generation_ = w.generation;
      run_end_ = w.k + 1;
    }
    // Only whole runs, except at the end of the known spans: a run claimed as soon as one
    // span entered the window would be a run of one.
    while (run_end_ <= last && (last + 1 - run_end_ >= run_spans || ahead->at_end)) {
      const size_t end = std::min(run_end_ + run_spans, last + 1);
      runs.push_back(std::make_shared<SpanClaims>(shared_->cache));
      for (size_t k = run_end_; k < end; ++k) runs.back()->Claim(SpanKey{id_, w.generation, k});
      run_end_ = end;
      if (runs.back()->empty()) runs.pop_back();
    }
  }
  for (std::shared_ptr<SpanClaims>& run : runs) {
    DecodePool().Submit([self, run = std::move(run)]() mutable {
      // Dropped in here, while self (and so the cache) surely lives.
      const std::shared_ptr<SpanClaims> claims = std::move(run);
      self->RunSpans(*claims);
    });
  }
}

void DeflatedMember::RunSpans(SpanClaims& run) {
  for (size_t i = 0; i < run.size(); ++i) {
    // Each span parks its stream where the next begins, and the next takes it from there.
    const SpanKey& key = run.key(i);
    const Result<SpanPtr> span =
        SpanCache::Produce([&] { return ProduceKnownSpan(key.index, key.generation); });
    run.Fulfill(i, span);
    if (!span.ok()) {
      // The others' readers look up again and decode for themselves.
      run.FailRest(Status::Error(EAGAIN, source_.name + ": look up again"));
      return;
    }
  }
}

void DeflatedMember::PrefetchSpans(const Where& w, size_t count, uint64_t max_bytes) {
  const std::optional<Ahead> ahead = SpansAhead(w, count, max_bytes);
  if (!ahead.has_value()) return;
  const size_t last = ahead->last;  // the spans w.k + 1 ..= last
  std::shared_ptr<DeflatedMember> self = shared_from_this();
  for (size_t k = w.k + 1; k <= last; ++k) {
    const uint64_t generation = w.generation;
    shared_->cache.Prefetch(
        SpanKey{id_, generation, k},
        [self, k, generation] { return self->ProduceKnownSpan(k, generation); }, DecodePool());
  }
}

Result<SpanPtr> DeflatedMember::ProduceKnownSpan(size_t k, uint64_t generation) {
  Checkpoint cp;
  uint32_t crc_before = 0;
  uint64_t end = 0;
  std::optional<ChunkEnd> chunk;
  {
    std::lock_guard<std::mutex> lock(index_mu_);
    if (generation != generation_) return Status::Error(EAGAIN, source_.name + ": index replaced");
    cp = checkpoints_[k];
    crc_before = prefix_crcs_[k];
    const bool last = k + 1 == checkpoints_.size();
    end = last ? size() : checkpoints_[k + 1].out;
    if (seekable_) {
      chunk = ChunkEnd{last ? entry_.compressed_size : checkpoints_[k + 1].in, last};
    }
  }
  const size_t len = static_cast<size_t>(end - cp.out);
  NPZ_ASSIGN_OR_RETURN(auto buf, AllocateSpanBuffer(len));
  SpanStream used;
  Result<size_t> got = DecodeSpan(cp, crc_before, generation, buf.get(), len, &used, chunk);
  Status failure = got.ok() ? Status::Ok() : got.status();
  if (failure.ok() && *got != len) {
    failure = Bad("the deflate data ends early in the span at " + std::to_string(cp.out));
  }
  if (failure.ok() && shared_->verify != VerifyMode::kOff) {
    // A fast stream keeps the CRC-32 of everything it produced, so the span's is checked by
    // combining; it must be right before the stream is parked, because the fast path may
    // continue it to the member's end and check the member's CRC-32 with it.
    const std::optional<uint32_t> after =
        used.fast != nullptr ? used.fast->crc() : std::optional<uint32_t>();
    const bool good = after.has_value() ? *after == Crc32Combine(crc_before, cp.span_crc, len)
                                        : Crc32(0, buf.get(), len) == cp.span_crc;
    if (!good) failure = Bad("CRC-32 mismatch in the span at offset " + std::to_string(cp.out));
  }
  if (!failure.ok()) return FailOrDistrust(generation, failure);
  if (used.fast != nullptr) shared_->fast_pool.Park(StreamKey(generation), std::move(used.fast));
  if (used.zlib != nullptr) shared_->pool.Park(StreamKey(generation), std::move(used.zlib));
  auto span = std::make_shared<Span>();
  span->data = std::move(buf);
  span->size = len;
  return SpanPtr(std::move(span));
}

Result<size_t> DeflatedMember::DecodeSpan(const Checkpoint& cp, uint32_t crc_before,
                                          uint64_t generation, std::byte* out, size_t len,
                                          SpanStream* used, std::optional<ChunkEnd> chunk) {
  if (cp.at_block_start()) {  // the fast engine
    used->fast = shared_->fast_pool.Take(StreamKey(generation), cp.out);
    if (used->fast == nullptr) {
      span_restores_.fetch_add(1);
      NPZ_ASSIGN_OR_RETURN(used->fast, DecodeStream::Create(source_));
      NPZ_RETURN_IF_ERROR(used->fast->Restore(cp, crc_before));
    }
    if (!chunk.has_value()) return used->fast->Read(out, len);
    // A seek table's chunk, alone: decoded past its end (into the next chunk), a table
    // whose offsets lie could show bytes the deflate stream does not hold where they are.
    used->fast->LimitInput(chunk->in_end);
    NPZ_ASSIGN_OR_RETURN(size_t got, used->fast->Read(out, len));
    if (got == len) NPZ_RETURN_IF_ERROR(used->fast->FinishChunk(chunk->last));
    return got;
  }
  // Inside a block: only zlib resumes there.
  NPZ_ASSIGN_OR_RETURN(used->zlib, StreamAt(cp, false, generation));
  return used->zlib->Read(out, len, /*stop_at_block=*/false);
}

}  // namespace npzfs
