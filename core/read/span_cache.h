// A bounded, shared cache of decompressed spans of deflated members.
//
// Keys are (member id, generation, span index); values are immutable spans held by shared_ptr<const
// Span>, so a reader copies out of a span without any lock held and an evicted span lives
// on until its last reader drops it. The budget counts the memory of cached spans; eviction
// is least-recently-used. GetOrProduce de-duplicates work in flight: when two threads want
// the same missing span, one inflates it and the other waits for that result.
//
// Threads: every method is thread-safe. Lock order: SpanCache::mu_ is a leaf lock (nothing
// else is locked while it is held), and it is never held while a span is produced: the
// producer runs with no cache lock held.
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "core/base/thread_pool.h"
#include "npzfs/status.h"

namespace npzfs {

// Span buffers are mapped with mmap and unmapped when freed, so that the daemon's memory is
// the spans it holds. Through malloc they were not: glibc raises its mmap threshold to the
// size of the largest block freed, after which span-sized blocks come from per-thread
// arenas, where freed spans of one size do not fit the next of another; random frames after
// a first pass took the daemon from 160 to 250 MiB with a 128 MiB cache. A fresh mapping
// costs a page fault per 4 KiB written plus an munmap (~10% of a first pass, measured), so
// freed buffers are recycled through a small process-wide free list first.
struct SpanBufferDeleter {
  size_t capacity = 0;
  void operator()(std::byte* p) const;  // returns the buffer to the free list or frees it
};
using SpanBuffer = std::unique_ptr<std::byte, SpanBufferDeleter>;

// Uninitialized buffer of at least `capacity` bytes (get_deleter().capacity tells how
// many: whole pages for a mapped buffer); ENOMEM on failure.
Result<SpanBuffer> AllocateSpanBuffer(size_t capacity);

// An uncompressed run of a member.
struct Span {
  SpanBuffer data;
  size_t size = 0;
  // What keeping it costs: the buffer (whole pages when mapped) plus this object, its
  // shared_ptr and the cache's map and list nodes, so that many tiny spans (an archive of
  // thousands of small members) stay within the budget too.
  static constexpr size_t kOverheadBytes = 256;
  size_t memory() const { return std::max(size, data.get_deleter().capacity) + kOverheadBytes; }
};
using SpanPtr = std::shared_ptr<const Span>;

// A member's spans are numbered by their checkpoint; `generation` changes when a member's
// checkpoints are replaced (a distrusted sidecar), so spans cut at the old ones are never
// found again.
struct SpanKey {
  uint64_t member = 0;
  uint64_t generation = 0;
  uint64_t index = 0;
  bool operator==(const SpanKey&) const = default;
};

class SpanCache {
 public:
  explicit SpanCache(uint64_t budget_bytes) : budget_(budget_bytes) {}

  // The cached span, or null.
  SpanPtr Lookup(const SpanKey& key);
  // Caches `span` (replacing an entry with the same key) and evicts down to the budget. A
  // span larger than the whole budget is not kept.
  void Insert(const SpanKey& key, SpanPtr span);
  // Returns the cached span; else waits if another thread is producing it; else calls
  // `produce` with no lock held, caches and returns its result. An error from `produce` is
  // returned to this caller and to every waiter; the next call tries again.
  Result<SpanPtr> GetOrProduce(const SpanKey& key, const std::function<Result<SpanPtr>()>& produce);

  // Starts producing `key` on `pool` unless it is cached or already in flight, and returns
  // at once; GetOrProduce calls for it meanwhile wait for that production. `produce` must
  // keep alive whatever owns this cache (the task outlives the call).
  void Prefetch(const SpanKey& key, std::function<Result<SpanPtr>()> produce, ThreadPool& pool);
  // Marks `key` as in flight, to be produced later by the caller, unless it is cached or in
  // flight: true if claimed. GetOrProduce calls for it meanwhile wait. The claimer must
  // Fulfill every key it claimed, or those waiters wait for good.
  bool Claim(const SpanKey& key);
  // Completes a claimed key with `result` (cached if ok) and wakes its waiters.
  void Fulfill(const SpanKey& key, const Result<SpanPtr>& result);
  // Waits while `key` is being produced, at most `timeout`; returns at once if it is not,
  // or if it is a Prefetch still queued (a pool thread waiting for a task queued behind it
  // could wait for good). For a producer that can continue from what that production
  // leaves behind.
  void WaitWhileInFlight(const SpanKey& key, std::chrono::milliseconds timeout);

  uint64_t budget() const { return budget_; }
  uint64_t bytes() const;  // memory of the cached spans
  size_t count() const;    // number of cached spans
  // GetOrProduce calls answered without producing (cached, or produced by another caller
  // meanwhile), and calls that produced: the user.npzfs.stats counters of a mount.
  uint64_t hits() const;
  uint64_t misses() const;

 private:
  struct KeyHash {
    size_t operator()(const SpanKey& k) const {
      return std::hash<uint64_t>()(
          (k.member * 0x9E3779B97F4A7C15ull + k.generation) * 0xC2B2AE3D27D4EB4Full ^ k.index);
    }
  };
  struct Entry {
    SpanPtr span;
    std::list<SpanKey>::iterator lru;
  };
  struct InFlight {
    bool started = false;  // the producer runs (a Prefetch may still be queued)
    bool done = false;
    Result<SpanPtr> result = Status::Error(EIO, "span not produced");
  };
  // Requires mu_. Moves evicted spans to `dropped` so they are freed after unlocking.
  void InsertLocked(const SpanKey& key, SpanPtr span, std::vector<SpanPtr>* dropped);
  // Caches the result of an in-flight production and wakes its waiters.
  void Complete(const SpanKey& key, const std::shared_ptr<InFlight>& flight,
                const Result<SpanPtr>& result);

  const uint64_t budget_;
  mutable std::mutex mu_;
  std::condition_variable produced_;  // signalled when an in-flight span completes
  std::unordered_map<SpanKey, Entry, KeyHash> map_;
  std::list<SpanKey> lru_;  // most recently used first
  std::unordered_map<SpanKey, std::shared_ptr<InFlight>, KeyHash> in_flight_;
  uint64_t bytes_ = 0;
  uint64_t hits_ = 0;
  uint64_t misses_ = 0;
};

}  // namespace npzfs
