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
//
// Exceptions: a span in flight through GetOrProduce, Prefetch or SpanClaims always ends,
// whatever its producer does. A producer that throws (std::bad_alloc from a decoder's
// vector) gives its key the error for that exception (Produce: ENOMEM for std::bad_alloc,
// EIO otherwise) instead of a span, and a claim whose holder unwinds before fulfilling it
// is failed by its guard (SpanClaims), so waiters get an error, never wait for good, and
// the next request produces the span again. A key taken with the bare Claim is its
// claimer's to fulfill on every path.
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
  // `produce` with no lock held, caches and returns its result. An error from `produce` (or
  // the error for an exception it throws: see Produce) is returned to this caller and to
  // every waiter; the next call tries again.
  Result<SpanPtr> GetOrProduce(const SpanKey& key, const std::function<Result<SpanPtr>()>& produce);

  // Starts producing `key` on `pool` unless it is cached or already in flight, and returns
  // at once; GetOrProduce calls for it meanwhile wait for that production. `produce` must
  // keep alive whatever owns this cache (the task outlives the call). If the task cannot be
  // queued (Submit throws), the key is failed (EIO) and the exception goes to the caller.
  void Prefetch(const SpanKey& key, std::function<Result<SpanPtr>()> produce, ThreadPool& pool);
  // Marks `key` as in flight, to be produced later by the caller, unless it is cached or in
  // flight: true if claimed. GetOrProduce calls for it meanwhile wait. The claimer must
  // Fulfill every key it claimed on every path, unwinding included, or those waiters wait
  // for good: claim through SpanClaims, which does that.
  bool Claim(const SpanKey& key);
  // Completes a claimed key with `result` (cached if ok) and wakes its waiters.
  void Fulfill(const SpanKey& key, const Result<SpanPtr>& result);
  // Calls `produce`: its result, or the error for an exception it throws (ExceptionStatus:
  // ENOMEM for std::bad_alloc, EIO otherwise). Every production of a key in flight goes
  // through it, so that the key is completed with that error and nothing is thrown past
  // it.
  static Result<SpanPtr> Produce(const std::function<Result<SpanPtr>()>& produce) noexcept;
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
  friend class SpanClaims;
  struct InFlight {
    bool started = false;  // the producer runs (a Prefetch may still be queued)
    bool done = false;
    // What waiters get if the production is abandoned (Abandon): made with the flight, so
    // that failing it allocates nothing.
    Result<SpanPtr> result = Status::Error(EIO, "span cache: the span's producer failed");
  };
  // Requires mu_. Moves evicted spans to `dropped` so they are freed after unlocking. If
  // it throws (std::bad_alloc), the cache is still consistent (the span may not be kept).
  void InsertLocked(const SpanKey& key, SpanPtr span, std::vector<SpanPtr>* dropped);
  // `key` in flight, unless it is cached or in flight already (null). Requires mu_.
  std::shared_ptr<InFlight> StartLocked(const SpanKey& key, bool started);
  // Caches the result of an in-flight production and wakes its waiters; does nothing if
  // the flight is done already. If it throws (copying an error's message, inserting), the
  // flight is left in flight (for the claim guard to abandon) or completed: never half.
  void Complete(const SpanKey& key, const std::shared_ptr<InFlight>& flight,
                const Result<SpanPtr>& result);
  // Completes the flight with its default error (InFlight::result) unless it is done:
  // allocates nothing, throws nothing (a guard's destructor calls it).
  void Abandon(const SpanKey& key, const std::shared_ptr<InFlight>& flight) noexcept;

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

// The guard of a producer's claims (RAII): the keys it claimed in one SpanCache, in order,
// each to be fulfilled once. Destroying it fails every key it still holds (with EIO:
// "the span's producer failed"), so that a producer that throws, or a pool task holding it
// that is dropped before it runs, never leaves waiters waiting for good; their next request
// produces the span again. Produce the spans through SpanCache::Produce, so that a
// producer's exception reaches the waiters as its own error (ENOMEM for std::bad_alloc).
//
// Ownership: holds its keys' in-flight states; the cache must outlive it. Threads: not
// thread-safe (one producer at a time); it may move to another thread, e.g. into a pool task
// through a shared_ptr.
class SpanClaims {
 public:
  explicit SpanClaims(SpanCache& cache) : cache_(&cache) {}
  ~SpanClaims() { AbandonAll(); }
  SpanClaims(const SpanClaims&) = delete;
  SpanClaims& operator=(const SpanClaims&) = delete;

  // SpanCache::Claim, the key then held here (as number size() - 1): true if claimed.
  bool Claim(const SpanKey& key);
  size_t size() const { return held_.size(); }
  bool empty() const { return held_.empty(); }
  const SpanKey& key(size_t i) const { return held_[i].key; }
  // Completes key(i) with `result` (SpanCache::Fulfill); a key already completed is left
  // as it is.
  void Fulfill(size_t i, const Result<SpanPtr>& result);
  // Completes every key not yet completed with `failure`.
  void FailRest(const Status& failure);

 private:
  friend class SpanCache;
  struct Held {
    SpanKey key;
    std::shared_ptr<SpanCache::InFlight> flight;  // null once completed
  };
  // Claim, with the cache's mu_ held; `started`: its producer runs (false for a Prefetch
  // still queued).
  bool ClaimLocked(const SpanKey& key, bool started);
  void AbandonAll() noexcept;

  SpanCache* cache_;
  std::vector<Held> held_;
};

}  // namespace npzfs
