// The fast path of a deflated member: fixed chunks decoded by the fast engine ahead of the
// checkpoints, resumed from parked streams, checkpoints and snapshots. Design: the essay at
// the top of deflated_member.h.
#include <algorithm>
#include <cinttypes>
#include <cstdio>

#include "core/base/crc32.h"
#include "core/read/block_finder.h"
#include "core/read/deflated_member.h"
#include "core/read/read_pools.h"

namespace npzfs {
namespace {

// Fast chunks live in the span cache beside the spans, told apart by this bit of the index.
constexpr uint64_t kFastKeyBit = uint64_t{1} << 63;

}  // namespace

SpanKey DeflatedMember::FastKey(uint64_t chunk, uint64_t generation) const {
  return SpanKey{id_, generation, kFastKeyBit | chunk};
}

Result<DeflatedMember::SpanRef> DeflatedMember::FastChunkAt(uint64_t pos, uint64_t generation,
                                                            uint64_t lead) {
  const uint64_t chunk = pos / kFastChunk;
  // Ahead of a sequential reader: the next chunks, which continue the stream this one parks.
  // Claimed before this chunk is looked up, so that a reader whose chunk the chain is about
  // to decode waits for it rather than decoding it on its own thread; a new chain starts
  // once this chunk is there to continue from.
  const bool start_chain = lead > 0 && ExtendFastChain(chunk, lead, generation);
  Result<SpanPtr> span = shared_->cache.GetOrProduce(
      FastKey(chunk, generation), [&] { return ProduceFastChunk(chunk, generation); });
  if (start_chain) {
    std::shared_ptr<DeflatedMember> self = shared_from_this();
    DecodePool().Submit([self] { self->RunFastChain(); });
  }
  if (!span.ok()) return span.status();
  return SpanRef{std::move(span).value(), chunk * kFastChunk};
}

bool DeflatedMember::ExtendFastChain(uint64_t chunk, uint64_t lead, uint64_t generation) {
  const uint64_t chunks = (size() + kFastChunk - 1) / kFastChunk;
  const uint64_t end = std::min(chunk + 1 + lead, chunks);
  bool start = false;
  {
    std::lock_guard<std::mutex> lock(chain_mu_);
    const bool same = chain_running_ && chain_generation_ == generation;
    if (same && chunk > chain_end_) {
      // Beyond the chain (another reader, or this one jumped): this read decodes on its own.
      return false;
    }
    if (!same) {
      if (chain_running_) return false;  // a chain of replaced checkpoints: it ends by itself
      chain_generation_ = generation;
      chain_end_ = chunk + 1;
      chain_running_ = start = true;
    }
    // Chunks cached or in flight already are left to their producer; the chain's next chunk
    // then continues the stream that one parks.
    for (uint64_t k = std::max(chain_end_, chunk + 1); k < end; ++k) {
      // Its place in the chain first: a chunk is never claimed without it.
      chain_claimed_.push_back(k);
      if (!shared_->cache.Claim(FastKey(k, generation))) chain_claimed_.pop_back();
    }
    chain_end_ = std::max(chain_end_, end);
    if (start && chain_claimed_.empty()) chain_running_ = start = false;
  }
  return start;
}

void DeflatedMember::RunFastChain() {
  while (true) {
    uint64_t chunk = 0, generation = 0;
    {
      std::lock_guard<std::mutex> lock(chain_mu_);
      if (chain_claimed_.empty()) {
        chain_running_ = false;
        return;
      }
      chunk = chain_claimed_.front();
      chain_claimed_.pop_front();
      generation = chain_generation_;
    }
    // An exception from the decoder is this chunk's error (SpanCache::Produce), so the chain
    // still fulfills every chunk it claimed and stops.
    const Result<SpanPtr> span =
        SpanCache::Produce([&] { return ProduceFastChunk(chunk, generation); });
    shared_->cache.Fulfill(FastKey(chunk, generation), span);
    if (!span.ok()) {
      // The rest cannot continue this stream: each waiter gets the error (EAGAIN: look up
      // again), and nothing is cached for them.
      std::deque<uint64_t> rest;
      {
        std::lock_guard<std::mutex> lock(chain_mu_);
        rest.swap(chain_claimed_);
        chain_running_ = false;
      }
      for (uint64_t k : rest) shared_->cache.Fulfill(FastKey(k, generation), span.status());
      return;
    }
  }
}

Result<SpanPtr> DeflatedMember::ProduceFastChunk(uint64_t chunk, uint64_t generation) {
  const uint64_t start = chunk * kFastChunk;
  if (start >= size()) return Bad("read past the end of the member");
  const size_t len = static_cast<size_t>(std::min<uint64_t>(kFastChunk, size() - start));
  Result<std::unique_ptr<DecodeStream>> resumed = FastStreamAt(start, generation);
  // Resuming can fail on a saved checkpoint's window: that distrusts the sidecar too.
  if (!resumed.ok()) return FailOrDistrust(generation, resumed.status());
  std::unique_ptr<DecodeStream> stream = std::move(resumed).value();
  NPZ_ASSIGN_OR_RETURN(SpanBuffer buf, AllocateSpanBuffer(len));
  Status s = SkipFar(stream, start, generation);
  if (s.ok()) {
    Result<size_t> got = stream->Read(buf.get(), len);
    if (!got.ok()) {
      s = got.status();
    } else if (*got != len) {
      s = EndsEarly(start + *got);
    }
  }
  if (s.ok() && start + len == size()) s = CheckFastEnd(*stream);
  if (!s.ok()) return FailOrDistrust(generation, s);
  if (start + len < size()) {
    MaybeSnapshot(*stream, generation);
    shared_->fast_pool.Park(StreamKey(generation), std::move(stream));
  }
  fast_chunks_.fetch_add(1);
  auto span = std::make_shared<Span>();
  span->data = std::move(buf);
  span->size = len;
  return SpanPtr(std::move(span));
}

Result<std::unique_ptr<DecodeStream>> DeflatedMember::FastStreamAt(uint64_t pos,
                                                                   uint64_t generation) {
  const uint64_t key = StreamKey(generation);
  if (std::unique_ptr<DecodeStream> s = shared_->fast_pool.Take(key, pos)) return s;
  // The kernel's readahead asks for the next chunks while this one is still being decoded:
  // wait for the chunk before to park its stream here rather than decode again from a
  // resume point up to a MiB back (that doubled the decoding of a first `cat`).
  if (pos >= kFastChunk && pos % kFastChunk == 0) {
    // A chunk decodes in well under a millisecond (the bound is a backstop).
    shared_->cache.WaitWhileInFlight(FastKey(pos / kFastChunk - 1, generation),
                                     std::chrono::milliseconds(100));
    if (std::unique_ptr<DecodeStream> s = shared_->fast_pool.Take(key, pos)) return s;
  }
  Checkpoint cp;
  uint32_t prefix_crc = 0;
  {
    std::lock_guard<std::mutex> lock(index_mu_);
    if (generation != generation_) return Status::Error(EAGAIN, "index replaced");
    // The last checkpoint at or before pos that the fast engine can start at (a block start;
    // checkpoint 0 always is).
    size_t k = static_cast<size_t>(
                   std::upper_bound(checkpoints_.begin(), checkpoints_.end(), pos,
                                    [](uint64_t p, const Checkpoint& c) { return p < c.out; }) -
                   checkpoints_.begin()) -
               1;
    while (k > 0 && !checkpoints_[k].at_block_start()) --k;
    cp = checkpoints_[k];
    prefix_crc = prefix_crcs_[k];
  }
  SnapshotStore::SnapshotPtr snap = shared_->snapshots.Before(key, pos);
  const uint64_t best = std::max(cp.out, snap != nullptr ? snap->out : 0);
  // A parked stream between the best resume point and pos is closer still.
  if (std::unique_ptr<DecodeStream> s = shared_->fast_pool.TakeBehind(key, pos, pos - best)) {
    return s;
  }
  NPZ_ASSIGN_OR_RETURN(std::unique_ptr<DecodeStream> stream, DecodeStream::Create(source_));
  if (snap != nullptr && snap->out >= cp.out) {
    NPZ_RETURN_IF_ERROR(stream->Restore(*snap));
  } else {
    NPZ_RETURN_IF_ERROR(stream->Restore(cp, prefix_crc));
  }
  return stream;
}

Status DeflatedMember::SkipTo(DecodeStream& stream, uint64_t pos, uint64_t generation) {
  // Stops at every multiple of kSnapshotEvery on the way, to leave resume points behind.
  while (stream.resume_pos() < pos) {
    const uint64_t here = stream.resume_pos();
    const uint64_t stop = std::min(pos, (here / kSnapshotEvery + 1) * kSnapshotEvery);
    NPZ_ASSIGN_OR_RETURN(size_t got, stream.Skip(stop - here));
    if (got != stop - here) {
      return EndsEarly(here + got);
    }
    MaybeSnapshot(stream, generation);
  }
  return Status::Ok();
}

// Shared by a reader in SkipFar and the DecodePool task it starts (RunSpeculation). The
// helper's offsets are relative to first_bit until the reader proves the guess and rebases.
struct DeflatedMember::Speculation {
  static constexpr uint64_t kMaxSnaps = 256;  // ~14 MB of ISA-L states held by the helper

  // Set before the task is submitted, then read only.
  uint64_t from_bit = 0;  // where the helper looks for a block
  uint64_t in_cap = 0;    // once past this (checked between steps) it stops, if no target
  uint64_t snapshot_every = kSnapshotEvery;  // a multiple of it

  std::mutex mu;  // guards everything below
  std::condition_variable cv;
  // Written by the helper:
  bool searching = false;  // the search for a block began (it ends with found or done)
  bool found = false;      // the fields of `start` are set
  bool done = false;       // the helper returned: it touches nothing here any more
  SpeculativeStart start;
  // Every snapshot_every bytes (at most kMaxSnaps): out relative to first_bit, crc of the
  // bytes from the resume point (start.out_between) on.
  std::vector<DecodeStream::Snapshot> snaps;
  std::unique_ptr<DecodeStream> stream;  // at `target`, relative as the snapshots
  // Written by the reader:
  bool stop = false;
  uint64_t target = UINT64_MAX;  // relative offset the helper stops at
};

void DeflatedMember::RunSpeculation(Speculation& spec) {
  bool finished = false;
  auto finish = [&spec, &finished](std::unique_ptr<DecodeStream> stream) {
    std::lock_guard<std::mutex> lock(spec.mu);
    if (stream != nullptr && !spec.stop && stream->resume_pos() == spec.target) {
      spec.stream = std::move(stream);
    }
    spec.done = true;
    finished = true;
    spec.cv.notify_all();
  };
  // The reader may wait for `done`: it is set whatever happens here, an allocation that
  // throws included (the pool does not catch).
  try {
    SpeculateFrom(spec, finish);
  } catch (...) {
    if (!finished) finish(nullptr);
  }
}

void DeflatedMember::SpeculateFrom(
    Speculation& spec, const std::function<void(std::unique_ptr<DecodeStream>)>& finish) {
  bool stopped = false;
  {
    std::lock_guard<std::mutex> lock(spec.mu);
    stopped = spec.stop;
    spec.searching = !stopped;
  }
  if (stopped) return finish(nullptr);  // the reader needs it no more
  Result<std::optional<SpeculativeStart>> found =
      FindSpeculativeStart(source_, spec.from_bit, SpeculationLimits());
  if (!found.ok() || !found->has_value()) return finish(nullptr);
  Result<std::unique_ptr<DecodeStream>> created = DecodeStream::Create(source_);
  if (!created.ok()) return finish(nullptr);
  std::unique_ptr<DecodeStream> stream = std::move(created).value();
  const SpeculativeStart& start = **found;
  if (!stream->RestoreAt(start.resume_bit, start.window, start.out_between, 0).ok()) {
    return finish(nullptr);
  }
  {
    std::lock_guard<std::mutex> lock(spec.mu);
    spec.searching = false;
    spec.found = true;
    spec.start = std::move(**found);
    spec.cv.notify_all();
  }
  while (true) {
    uint64_t target = 0;
    size_t held = 0;
    {
      std::lock_guard<std::mutex> lock(spec.mu);
      if (spec.stop) break;
      target = spec.target;
      held = spec.snaps.size();
    }
    const uint64_t here = stream->resume_pos();
    if (here >= target || (target == UINT64_MAX && stream->input_pos() >= spec.in_cap)) break;
    const uint64_t every = spec.snapshot_every;
    const uint64_t next = std::min(target, (here / every + 1) * every);
    Result<size_t> got = stream->Skip(next - here);
    // Bad data or the stream's end: the reader finds out on its own.
    if (!got.ok() || *got != next - here) return finish(nullptr);
    if (next == target || held >= Speculation::kMaxSnaps) continue;
    Result<DecodeStream::Snapshot> snap = stream->TakeSnapshot();
    if (!snap.ok()) continue;
    std::lock_guard<std::mutex> lock(spec.mu);
    spec.snaps.push_back(std::move(snap).value());
  }
  finish(std::move(stream));
}

Status DeflatedMember::SkipFar(std::unique_ptr<DecodeStream>& stream, uint64_t pos,
                               uint64_t generation) {
  const uint64_t from = stream->resume_pos();
  const uint64_t in_from = stream->input_pos();
  const uint64_t csize = entry_.compressed_size;
  if (shared_->speculate_bytes == 0 || pos < from + shared_->speculate_bytes ||
      !FastEngineIsIsal() || DecodePool().size() < 2 || in_from >= csize) {
    return SkipTo(*stream, pos, generation);
  }
  // Where pos's compressed bytes probably are, at the member's average ratio; the helper
  // takes the second half of the way there.
  const double ratio = static_cast<double>(csize) / static_cast<double>(size());
  const uint64_t in_pos = std::min<uint64_t>(
      csize, in_from + static_cast<uint64_t>(static_cast<double>(pos - from) * ratio));
  auto spec = std::make_shared<Speculation>();
  spec->from_bit = (in_from + (in_pos - in_from) / 2) * 8;
  spec->in_cap = std::min(csize, in_pos + (in_pos - in_from) / 4);
  // The helper holds its snapshots until the reader rebases them: at most kMaxSnaps.
  const auto helper_out = static_cast<uint64_t>(
      static_cast<double>(spec->in_cap - spec->from_bit / 8) / std::max(ratio, 1e-3));
  spec->snapshot_every =
      kSnapshotEvery * (1 + helper_out / (Speculation::kMaxSnaps * kSnapshotEvery));
  std::shared_ptr<DeflatedMember> self = shared_from_this();
  DecodePool().Submit([self, spec] { self->RunSpeculation(*spec); });
  struct StopOnExit {  // whatever happens here, the helper stops at its next step
    Speculation& spec;
    ~StopOnExit() {
      std::lock_guard<std::mutex> lock(spec.mu);
      spec.stop = true;
    }
  } stop_on_exit{*spec};

  // Decode towards pos as SkipTo does, until the helper has found its block: then only up to
  // that block, where the stream must stop between two blocks for the guess to be right.
  bool limited = false, met = false;
  uint64_t first_bit = 0;
  // A step decodes kSnapshotEvery bytes, from roughly that many compressed bytes on this
  // data (stored blocks add 5 bytes in 64 KiB); the input buffer reads 128 KiB ahead.
  const uint64_t step_in = kSnapshotEvery + kSnapshotEvery / 8;
  const uint64_t search_end = spec->from_bit / 8 + SpeculationLimits().search_bytes;
  bool waited = false, alone = false;  // alone: the helper is told to stop
  while (stream->resume_pos() < pos) {
    if (!limited && !alone) {
      std::unique_lock<std::mutex> lock(spec->mu);
      // About to pass where the helper searches while it searches: wait a little for its
      // answer (the search takes a few ms, the reader's way there tens), else the split is
      // lost.
      const uint64_t in = stream->input_pos();
      if (spec->searching && !waited && in + step_in >= spec->from_bit / 8 && in < search_end) {
        waited = true;
        spec->cv.wait_for(lock, std::chrono::seconds(1), [&] { return spec->found || spec->done; });
      }
      if (spec->found) {
        first_bit = spec->start.first_bit;
        limited = stream->StopBefore(first_bit);
      }
      alone = spec->done || ((spec->found || waited) && !limited);  // past it, or too late
      spec->stop = alone;
    }
    const uint64_t here = stream->resume_pos();
    const uint64_t stop = std::min(pos, (here / kSnapshotEvery + 1) * kSnapshotEvery);
    NPZ_ASSIGN_OR_RETURN(size_t got, stream->Skip(stop - here));
    MaybeSnapshot(*stream, generation);
    if (got == stop - here) continue;
    if (!limited) {
      return EndsEarly(here + got);
    }
    met = stream->StopsAt(first_bit);  // else a false guess: go on alone
    break;
  }
  if (limited) stream->LiftLimit();  // met, a false guess, or pos came first
  if (!met) return SkipTo(*stream, pos, generation);

  // first_bit is a block boundary: the helper's offset 0 is here. The helper decoded its
  // first out_between bytes into symbols of its own (not the fast engine) and started the
  // fast engine at resume_bit with their last 32 KiB as the window: so this stream decodes
  // them too, and must stop between two blocks exactly at resume_bit with those 32 KiB as
  // its last bytes. Then the helper's decoding from there is what this stream's would be
  // (a block boundary and its window determine everything after them), and its snapshots
  // and stream get their real offsets and the CRC-32 of the bytes before them.
  uint64_t out_between = 0, resume_bit = 0;
  std::vector<std::byte> window;
  {
    std::lock_guard<std::mutex> lock(spec->mu);
    out_between = spec->start.out_between;
    resume_bit = spec->start.resume_bit;
    window = spec->start.window;  // the helper does not change `start` once found
  }
  const uint64_t base = stream->resume_pos();
  const uint64_t resume = base + out_between;
  if (pos <= resume) return SkipTo(*stream, pos, generation);
  {
    std::lock_guard<std::mutex> lock(spec->mu);
    spec->target = pos - base;
  }
  // (The stream stopped at first_bit with no input read past it, so it can stop again.)
  bool proven = stream->StopBefore(resume_bit);
  if (proven) {
    const uint64_t head = out_between - window.size();  // >= 0: a window is 32 KiB
    NPZ_ASSIGN_OR_RETURN(size_t skipped, stream->Skip(head));
    std::vector<std::byte> tail(window.size() + 1);
    NPZ_ASSIGN_OR_RETURN(size_t got, stream->Read(tail.data(), tail.size()));
    proven = skipped == head && got == window.size() && stream->StopsAt(resume_bit) &&
             std::equal(window.begin(), window.end(), tail.begin());
    stream->LiftLimit();
  }
  if (!proven) {
    // The helper's own decoder went wrong: go on alone (and say so: it is a bug).
    shared_->Log(member_path_ + ": speculative decoding disagreed at bit " +
                 std::to_string(resume_bit) + "; decoding on without it");
    return SkipTo(*stream, pos, generation);
  }
  const std::optional<uint32_t> crc_at_resume = stream->crc();
  auto crc_at = [&](uint64_t rel_out, std::optional<uint32_t> rel_crc) -> std::optional<uint32_t> {
    if (!crc_at_resume.has_value() || !rel_crc.has_value()) return std::nullopt;
    return Crc32Combine(*crc_at_resume, *rel_crc, rel_out - out_between);
  };
  std::vector<DecodeStream::Snapshot> snaps;
  std::unique_ptr<DecodeStream> helper;
  {
    std::unique_lock<std::mutex> lock(spec->mu);
    spec->cv.wait(lock, [&] { return spec->done; });
    snaps = std::move(spec->snaps);
    helper = std::move(spec->stream);
  }
  speculations_.fetch_add(1);
  const uint64_t key = StreamKey(generation);
  uint64_t covered = UINT64_MAX;  // snapshots at or before this are not kept (MaybeSnapshot)
  {
    std::lock_guard<std::mutex> lock(index_mu_);
    if (generation == generation_ && !complete_) covered = checkpoints_.back().out;
  }
  for (DecodeStream::Snapshot& snap : snaps) {
    snap.crc = crc_at(snap.out, snap.crc);
    snap.out += base;
    if (covered != UINT64_MAX && snap.out > covered) {
      shared_->snapshots.Insert(key,
                                std::make_shared<const DecodeStream::Snapshot>(std::move(snap)));
    }
  }
  if (helper != nullptr) {
    helper->Rebase(pos, crc_at(pos - base, helper->crc()));
    shared_->fast_pool.Park(key, std::move(stream));
    stream = std::move(helper);
    return Status::Ok();
  }
  // The helper stopped short (its cap, or bad data ahead): go on from its last snapshot.
  SnapshotStore::SnapshotPtr snap = shared_->snapshots.Before(key, pos);
  if (snap != nullptr && snap->out > stream->resume_pos()) {
    shared_->fast_pool.Park(key, std::move(stream));
    NPZ_ASSIGN_OR_RETURN(stream, DecodeStream::Create(source_));
    NPZ_RETURN_IF_ERROR(stream->Restore(*snap));
  }
  return SkipTo(*stream, pos, generation);
}

void DeflatedMember::MaybeSnapshot(const DecodeStream& stream, uint64_t generation) {
  const uint64_t pos = stream.resume_pos();
  if (pos % kSnapshotEvery != 0 || stream.ended()) return;
  {
    std::lock_guard<std::mutex> lock(index_mu_);
    if (complete_ || pos <= checkpoints_.back().out) return;  // checkpoints cover it
  }
  if (shared_->snapshots.Has(StreamKey(generation), pos)) return;
  Result<DecodeStream::Snapshot> snap = stream.TakeSnapshot();
  if (!snap.ok()) return;  // a resume point less; nothing is wrong
  shared_->snapshots.Insert(StreamKey(generation), std::make_shared<const DecodeStream::Snapshot>(
                                                       std::move(snap).value()));
}

Status DeflatedMember::CheckFastEnd(DecodeStream& stream) {
  std::byte probe[1];
  NPZ_ASSIGN_OR_RETURN(size_t extra, stream.Read(probe, 1));
  if (extra > 0 || !stream.ended()) {
    return Bad("the deflate data is longer than the size in the directory");
  }
  const std::optional<uint32_t> crc = stream.crc();
  if (shared_->verify != VerifyMode::kOff && crc.has_value() && *crc != entry_.crc32) {
    char text[64];
    std::snprintf(text, sizeof text,
                  "CRC-32 mismatch (directory %08" PRIx32 ", data %08" PRIx32 ")", entry_.crc32,
                  *crc);
    return Bad(text);
  }
  return Status::Ok();
}

}  // namespace npzfs
