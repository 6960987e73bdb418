// The fast path of a deflated member: fixed chunks decoded by the fast engine ahead of the
// checkpoints, resumed from parked streams, checkpoints and snapshots. Design: the essay at
// the top of deflated_member.h.
#include <algorithm>
#include <cinttypes>
#include <cstdio>

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
  Status s = SkipTo(*stream, start, generation);
  if (s.ok()) {
    Result<size_t> got = stream->Read(buf.get(), len);
    if (!got.ok()) {
      s = got.status();
    } else if (*got != len) {
      s = Bad("the deflate data ends before the size in the directory (" +
              std::to_string(start + *got) + " of " + std::to_string(size()) + " bytes)");
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
      return Bad("the deflate data ends before the size in the directory (" +
                 std::to_string(here + got) + " of " + std::to_string(size()) + " bytes)");
    }
    MaybeSnapshot(stream, generation);
  }
  return Status::Ok();
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
