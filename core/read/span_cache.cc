// The span cache and the span buffer free list (see span_cache.h).
#include "core/read/span_cache.h"

#include <sys/mman.h>

#include <cstdlib>
#include <exception>
#include <list>
#include <vector>

namespace npzfs {

SpanPtr SpanCache::Lookup(const SpanKey& key) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = map_.find(key);
  if (it == map_.end()) return nullptr;
  lru_.splice(lru_.begin(), lru_, it->second.lru);
  return it->second.span;
}

void SpanCache::InsertLocked(const SpanKey& key, SpanPtr span, std::vector<SpanPtr>* dropped) {
  // Every step allocates before it changes anything, so that std::bad_alloc leaves the map,
  // the LRU list and bytes_ in agreement.
  auto it = map_.find(key);
  if (it != map_.end()) {
    dropped->push_back(std::move(it->second.span));
    bytes_ -= dropped->back()->memory();
    lru_.erase(it->second.lru);
    map_.erase(it);
  }
  if (span == nullptr || span->memory() > budget_) return;
  const size_t memory = span->memory();
  std::list<SpanKey> node(1, key);  // the LRU entry, moved into lru_ once the map has the span
  map_.emplace(key, Entry{std::move(span), node.begin()});
  lru_.splice(lru_.begin(), node);
  bytes_ += memory;
  while (bytes_ > budget_ && !lru_.empty()) {
    auto victim = map_.find(lru_.back());
    dropped->push_back(std::move(victim->second.span));
    bytes_ -= dropped->back()->memory();
    map_.erase(victim);
    lru_.pop_back();
  }
}

void SpanCache::Insert(const SpanKey& key, SpanPtr span) {
  std::vector<SpanPtr> dropped;  // freed after the lock is released
  std::lock_guard<std::mutex> lock(mu_);
  InsertLocked(key, std::move(span), &dropped);
}

Result<SpanPtr> SpanCache::Produce(const std::function<Result<SpanPtr>()>& produce) noexcept {
  try {
    return produce();
  } catch (...) {
    return ExceptionStatus(std::current_exception());
  }
}

std::shared_ptr<SpanCache::InFlight> SpanCache::StartLocked(const SpanKey& key, bool started) {
  if (map_.count(key) > 0 || in_flight_.count(key) > 0) return nullptr;
  auto flight = std::make_shared<InFlight>();
  flight->started = started;
  in_flight_.emplace(key, flight);
  ++misses_;  // a production, like a miss of GetOrProduce
  return flight;
}

Result<SpanPtr> SpanCache::GetOrProduce(const SpanKey& key,
                                        const std::function<Result<SpanPtr>()>& produce) {
  SpanClaims claim(*this);  // fails the key if this thread unwinds before completing it
  {
    std::unique_lock<std::mutex> lock(mu_);
    auto it = map_.find(key);
    if (it != map_.end()) {
      lru_.splice(lru_.begin(), lru_, it->second.lru);
      ++hits_;
      return it->second.span;
    }
    auto f = in_flight_.find(key);
    if (f != in_flight_.end()) {
      ++hits_;
      std::shared_ptr<InFlight> wait_for = f->second;
      produced_.wait(lock, [&] { return wait_for->done; });
      return wait_for->result;
    }
    claim.ClaimLocked(key, /*started=*/true);  // neither cached nor in flight: claimed
  }
  // No lock held while producing (inflating).
  Result<SpanPtr> result = Produce(produce);
  claim.Fulfill(0, result);
  return result;
}

bool SpanCache::Claim(const SpanKey& key) {
  std::lock_guard<std::mutex> lock(mu_);
  // Its producer is busy with the keys before it: started.
  return StartLocked(key, /*started=*/true) != nullptr;
}

void SpanCache::Fulfill(const SpanKey& key, const Result<SpanPtr>& result) {
  std::shared_ptr<InFlight> flight;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto f = in_flight_.find(key);
    if (f == in_flight_.end()) return;
    flight = f->second;
  }
  Complete(key, flight, result);
}

void SpanCache::WaitWhileInFlight(const SpanKey& key, std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  auto f = in_flight_.find(key);
  if (f == in_flight_.end() || !f->second->started) return;
  std::shared_ptr<InFlight> wait_for = f->second;
  produced_.wait_for(lock, timeout, [&] { return wait_for->done; });
}

namespace {

// Wakes a condition variable's waiters when it goes out of scope, however the scope ends.
struct NotifyAllOnExit {
  std::condition_variable& cv;
  ~NotifyAllOnExit() { cv.notify_all(); }
};

}  // namespace

void SpanCache::Complete(const SpanKey& key, const std::shared_ptr<InFlight>& flight,
                         const Result<SpanPtr>& result) {
  std::vector<SpanPtr> dropped;       // freed last, after the lock is released
  NotifyAllOnExit notify{produced_};  // after the lock is released, even if Insert throws
  std::lock_guard<std::mutex> lock(mu_);
  if (flight->done) return;
  flight->result = result;  // if copying an error's message throws, it is still in flight
  flight->done = true;
  if (auto f = in_flight_.find(key); f != in_flight_.end() && f->second == flight) {
    in_flight_.erase(f);
  }
  if (result.ok()) InsertLocked(key, *result, &dropped);  // waiters have their answer already
}

void SpanCache::Abandon(const SpanKey& key, const std::shared_ptr<InFlight>& flight) noexcept {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (flight->done) return;
    flight->done = true;  // its result is the error it was made with
    if (auto f = in_flight_.find(key); f != in_flight_.end() && f->second == flight) {
      in_flight_.erase(f);
    }
  }
  produced_.notify_all();
}

void SpanCache::Prefetch(const SpanKey& key, std::function<Result<SpanPtr>()> produce,
                         ThreadPool& pool) {
  // The task holds the claim: if it cannot be queued, the claim fails the key.
  auto claim = std::make_shared<SpanClaims>(*this);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!claim->ClaimLocked(key, /*started=*/false)) return;  // cached or in flight already
  }
  pool.Submit([this, claim, produce = std::move(produce)]() mutable {
    // Dropped in here, while `produce` (which keeps this cache alive) surely lives.
    const std::shared_ptr<SpanClaims> mine = std::move(claim);
    {
      std::lock_guard<std::mutex> lock(mu_);
      mine->held_[0].flight->started = true;
    }
    mine->Fulfill(0, Produce(produce));
  });
}

bool SpanClaims::Claim(const SpanKey& key) {
  std::lock_guard<std::mutex> lock(cache_->mu_);
  return ClaimLocked(key, /*started=*/true);
}

bool SpanClaims::ClaimLocked(const SpanKey& key, bool started) {
  held_.reserve(held_.size() + 1);  // so that holding the claim cannot throw once it is made
  std::shared_ptr<SpanCache::InFlight> flight = cache_->StartLocked(key, started);
  if (flight == nullptr) return false;
  held_.push_back(Held{key, std::move(flight)});
  return true;
}

void SpanClaims::Fulfill(size_t i, const Result<SpanPtr>& result) {
  Held& held = held_[i];
  if (held.flight == nullptr) return;
  cache_->Complete(held.key, held.flight, result);  // if it throws, the destructor fails it
  held.flight = nullptr;
}

void SpanClaims::FailRest(const Status& failure) {
  for (size_t i = 0; i < held_.size(); ++i) Fulfill(i, failure);
}

void SpanClaims::AbandonAll() noexcept {
  for (Held& held : held_) {
    if (held.flight == nullptr) continue;
    cache_->Abandon(held.key, held.flight);
    held.flight = nullptr;
  }
}

uint64_t SpanCache::bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return bytes_;
}
size_t SpanCache::count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return map_.size();
}
uint64_t SpanCache::hits() const {
  std::lock_guard<std::mutex> lock(mu_);
  return hits_;
}
uint64_t SpanCache::misses() const {
  std::lock_guard<std::mutex> lock(mu_);
  return misses_;
}

namespace {

// The free list: a few buffers, bounded in count and bytes. Its mutex is a leaf lock.
struct FreeList {
  std::mutex mu;
  std::vector<std::pair<std::byte*, size_t>> buffers;  // (buffer, capacity)
  size_t bytes = 0;
};
constexpr size_t kFreeListMaxBuffers = 8;
constexpr size_t kFreeListMaxBytes = size_t{32} << 20;

FreeList& Buffers() {
  static FreeList* list = new FreeList();  // NOLINT: intentionally leaked, used at exit
  return *list;
}

// Under AddressSanitizer span buffers come from malloc, which it guards with redzones (an
// overrun of a mapping would go unseen).
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kMapBuffers = false;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kMapBuffers = false;
#else
constexpr bool kMapBuffers = true;
#endif
#else
constexpr bool kMapBuffers = true;
#endif

constexpr size_t kPageBytes = 4096;  // a mapping takes whole pages, whatever it asks for

// A mapped buffer is populated at once: a span is written whole as soon as it is allocated,
// and one mmap that maps every page costs less than a page fault per 4 KiB (2% of the CPU
// time of a `cat` of a deflated member, whose first 128 MiB of spans fill the cache).
std::byte* NewBuffer(size_t capacity) {
  if (!kMapBuffers) return static_cast<std::byte*>(std::malloc(capacity));
  void* p = ::mmap(nullptr, capacity, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  return p == MAP_FAILED ? nullptr : static_cast<std::byte*>(p);
}

void DeleteBuffer(std::byte* p, size_t capacity) {
  if (!kMapBuffers) {
    std::free(p);
  } else {
    ::munmap(p, capacity);
  }
}

}  // namespace

void SpanBufferDeleter::operator()(std::byte* p) const {
  if (p == nullptr) return;
  if (capacity > kFreeListMaxBytes) {
    DeleteBuffer(p, capacity);
    return;
  }
  // The newest buffer is the likeliest to be wanted again: make room by freeing the oldest.
  std::vector<std::pair<std::byte*, size_t>> dropped;
  FreeList& list = Buffers();
  {
    std::lock_guard<std::mutex> lock(list.mu);
    while (!list.buffers.empty() && (list.buffers.size() >= kFreeListMaxBuffers ||
                                     list.bytes + capacity > kFreeListMaxBytes)) {
      dropped.push_back(list.buffers.front());
      list.bytes -= list.buffers.front().second;
      list.buffers.erase(list.buffers.begin());
    }
    list.buffers.emplace_back(p, capacity);
    list.bytes += capacity;
  }
  for (const auto& [d, size] : dropped) DeleteBuffer(d, size);
}

Result<SpanBuffer> AllocateSpanBuffer(size_t capacity) {
  if (capacity == 0) capacity = 1;
  if (kMapBuffers) capacity = (capacity + kPageBytes - 1) / kPageBytes * kPageBytes;
  FreeList& list = Buffers();
  {
    std::lock_guard<std::mutex> lock(list.mu);
    // A recycled buffer that fits without wasting more than half of it.
    for (auto it = list.buffers.begin(); it != list.buffers.end(); ++it) {
      if (it->second >= capacity && it->second / 2 <= capacity) {
        SpanBuffer buf(it->first, SpanBufferDeleter{it->second});
        list.bytes -= it->second;
        list.buffers.erase(it);
        return buf;
      }
    }
  }
  std::byte* p = NewBuffer(capacity);
  if (p == nullptr) return Status::Error(ENOMEM, "cannot allocate a span buffer");
  return SpanBuffer(p, SpanBufferDeleter{capacity});
}

}  // namespace npzfs
