// Tests of the shared span cache: budget and LRU eviction, de-duplication of work in flight,
// errors, producers that throw (and deflated member reads whose decoder cannot allocate),
// and the span buffer free list.
#include "core/read/span_cache.h"

#include <gtest/gtest.h>
#include <zlib.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <future>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "npzfs/archive.h"
#include "tests/deflate_fixtures.h"
#include "tests/test_util.h"

namespace npzfs {
namespace {

// Allocation faults for the tests of a deflated member's reads (operator new is replaced at
// the end of this file): while armed, the next operator new of at least kFaultMinBytes on a
// thread that is not exempt throws std::bad_alloc. Only a decoder's 128 KiB input buffer is
// that large on the read path (span buffers are mapped, not allocated with new), so a fault
// hits a span's decode where a real out-of-memory would: a test seam that needs no hook in
// the code under test.
constexpr size_t kFaultMinBytes = 100 << 10;
std::atomic<int> g_faults_armed{0};
std::atomic<int> g_faults_fired{0};
thread_local bool t_fault_exempt = false;

void* AllocateOrFault(size_t n) {
  if (n >= kFaultMinBytes && !t_fault_exempt) {
    int armed = g_faults_armed.load();
    while (armed > 0 && !g_faults_armed.compare_exchange_weak(armed, armed - 1)) {
    }
    if (armed > 0) {
      g_faults_fired.fetch_add(1);
      throw std::bad_alloc();
    }
  }
  void* p = std::malloc(n == 0 ? 1 : n);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}

// Runs `fn` on a thread of its own and waits for it at most `limit`: false if it is still
// running then (it is left running, detached, with whatever it captured by value), so that
// a test whose waiter would wait for good fails with a message instead of hanging.
bool FinishesWithin(std::chrono::seconds limit, std::function<void()> fn) {
  auto done = std::make_shared<std::promise<void>>();
  std::future<void> finished = done->get_future();
  std::thread([done, fn = std::move(fn)] {
    fn();
    done->set_value();
  }).detach();
  return finished.wait_for(limit) == std::future_status::ready;
}

constexpr auto kHangLimit = std::chrono::seconds(10);

SpanPtr MakeSpan(size_t size, char fill) {
  auto span = std::make_shared<Span>();
  auto buf = AllocateSpanBuffer(size);
  EXPECT_TRUE(buf.ok());
  std::memset(buf->get(), fill, size);
  span->data = std::move(buf).value();
  span->size = size;
  return span;
}

SpanKey Key(uint64_t member, uint64_t index) { return SpanKey{member, 0, index}; }

// Room for three spans of 40,000 bytes (whole pages and the per-span overhead included),
// not four.
constexpr size_t kSpanBytes = 40000;
constexpr size_t kBudget = 130000;

TEST(SpanCache, EvictsTheLeastRecentlyUsedSpansToStayWithinBudget) {
  SpanCache cache(kBudget);
  cache.Insert(Key(1, 0), MakeSpan(kSpanBytes, 'a'));
  cache.Insert(Key(1, 1), MakeSpan(kSpanBytes, 'b'));
  cache.Insert(Key(2, 0), MakeSpan(kSpanBytes, 'c'));
  ASSERT_NE(cache.Lookup(Key(1, 0)), nullptr);  // now most recent
  cache.Insert(Key(2, 1), MakeSpan(kSpanBytes, 'd'));
  EXPECT_EQ(cache.Lookup(Key(1, 1)), nullptr);
  EXPECT_NE(cache.Lookup(Key(1, 0)), nullptr);
  EXPECT_NE(cache.Lookup(Key(2, 1)), nullptr);
  EXPECT_LE(cache.bytes(), kBudget);
  EXPECT_EQ(cache.count(), 3u);
}

TEST(SpanCache, ManyTinySpansAreCountedAtWhatTheyCostNotAtTheirSize) {
  SpanCache cache(kBudget);
  for (uint64_t i = 0; i < 1000; ++i) cache.Insert(Key(i, 0), MakeSpan(300, 'x'));
  // Each holds at least a 4 KiB page when mapped (300 bytes and a malloc header otherwise),
  // and the cache's own bookkeeping.
  EXPECT_LE(cache.bytes(), kBudget);
  EXPECT_LE(cache.count(), kBudget / (300 + Span::kOverheadBytes));
  EXPECT_GE(cache.count(), 1u);
}

TEST(SpanCache, ASpanLargerThanTheWholeBudgetIsReturnedButNotKept) {
  SpanCache cache(kBudget);
  cache.Insert(Key(1, 0), MakeSpan(kSpanBytes, 'a'));
  cache.Insert(Key(3, 0), MakeSpan(4 * kSpanBytes, 'e'));
  EXPECT_EQ(cache.Lookup(Key(3, 0)), nullptr);
  EXPECT_NE(cache.Lookup(Key(1, 0)), nullptr) << "a span that is not kept evicts nothing";
  auto r =
      cache.GetOrProduce(Key(4, 0), [] { return Result<SpanPtr>(MakeSpan(4 * kSpanBytes, 'f')); });
  ASSERT_TRUE(r.ok());
  EXPECT_EQ((*r)->size, 4 * kSpanBytes);
  EXPECT_EQ((*r)->data.get()[4 * kSpanBytes - 1], std::byte{'f'});
  EXPECT_EQ(cache.Lookup(Key(4, 0)), nullptr);
  EXPECT_LE(cache.bytes(), kBudget);
}

TEST(SpanCache, ReinsertingAKeyReplacesTheSpanAndKeepsTheAccountingRight) {
  SpanCache cache(10000);
  cache.Insert(Key(1, 0), MakeSpan(1000, 'a'));
  cache.Insert(Key(1, 0), MakeSpan(2000, 'b'));
  EXPECT_EQ(cache.count(), 1u);
  SpanPtr s = cache.Lookup(Key(1, 0));
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->size, 2000u);
  EXPECT_EQ(cache.bytes(), s->memory());
}

TEST(SpanCache, KeysDifferingOnlyInGenerationAreDifferentSpans) {
  SpanCache cache(10000);
  cache.Insert(SpanKey{1, 0, 5}, MakeSpan(100, 'a'));
  EXPECT_EQ(cache.Lookup(SpanKey{1, 1, 5}), nullptr);
  cache.Insert(SpanKey{1, 1, 5}, MakeSpan(100, 'b'));
  EXPECT_EQ(cache.Lookup(SpanKey{1, 0, 5})->data.get()[0], std::byte{'a'});
  EXPECT_EQ(cache.Lookup(SpanKey{1, 1, 5})->data.get()[0], std::byte{'b'});
}

TEST(SpanCache, AnEvictedSpanStaysValidForAReaderThatHoldsIt) {
  SpanCache cache(kSpanBytes + kSpanBytes / 2);
  cache.Insert(Key(1, 0), MakeSpan(kSpanBytes, 'a'));
  SpanPtr held = cache.Lookup(Key(1, 0));
  cache.Insert(Key(1, 1), MakeSpan(kSpanBytes, 'b'));  // evicts (1, 0)
  EXPECT_EQ(cache.Lookup(Key(1, 0)), nullptr);
  ASSERT_NE(held, nullptr);
  for (size_t i = 0; i < held->size; ++i) ASSERT_EQ(held->data.get()[i], std::byte{'a'});
}

TEST(SpanCache, ConcurrentRequestsForOneSpanProduceItOnce) {
  SpanCache cache(1 << 20);
  std::atomic<int> produced{0};
  std::atomic<int> ok{0};
  // The producer waits until every other thread is queued behind it (no sleeps).
  std::mutex mu;
  std::condition_variable cv;
  int arrived = 0;
  constexpr int kThreads = 4;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      {
        std::lock_guard<std::mutex> lock(mu);
        ++arrived;
      }
      cv.notify_all();
      auto r = cache.GetOrProduce(Key(5, 5), [&]() -> Result<SpanPtr> {
        ++produced;
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock, [&] { return arrived == kThreads; });
        return MakeSpan(100, 'x');
      });
      if (r.ok() && (*r)->size == 100) ++ok;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(produced.load(), 1);
  EXPECT_EQ(ok.load(), kThreads);
}

TEST(SpanCache, AFailedProductionIsReturnedAndRetriedNextTime) {
  SpanCache cache(1 << 20);
  auto r = cache.GetOrProduce(
      Key(1, 1), []() -> Result<SpanPtr> { return Status::Error(EIO, "x.npz: member a: boom"); });
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), EIO);
  EXPECT_EQ(r.status().message(), "x.npz: member a: boom");
  EXPECT_EQ(cache.count(), 0u);
  auto again = cache.GetOrProduce(Key(1, 1), [] { return Result<SpanPtr>(MakeSpan(10, 'y')); });
  ASSERT_TRUE(again.ok());
  EXPECT_EQ((*again)->size, 10u);
  EXPECT_EQ(cache.count(), 1u);
}

TEST(SpanCache, GetOrProduceReturnsACachedSpanWithoutCallingTheProducer) {
  SpanCache cache(1 << 20);
  cache.Insert(Key(2, 3), MakeSpan(10, 'c'));
  bool called = false;
  auto r = cache.GetOrProduce(Key(2, 3), [&] {
    called = true;
    return Result<SpanPtr>(MakeSpan(10, 'd'));
  });
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(called);
  EXPECT_EQ((*r)->data.get()[0], std::byte{'c'});
}

// A production of `key` started on its own thread and held inside the producer until
// Release(): the span is in flight, and started, for as long as the test wants.
class HeldProduction {
 public:
  HeldProduction(SpanCache& cache, const SpanKey& key) {
    thread_ = std::thread([this, &cache, key] {
      auto got = cache.GetOrProduce(key, [this]() -> Result<SpanPtr> {
        std::unique_lock<std::mutex> lock(mu_);
        producing_ = true;
        cv_.notify_all();
        cv_.wait(lock, [this] { return released_; });
        return MakeSpan(100, 'p');
      });
      EXPECT_TRUE(got.ok());
    });
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return producing_; });
  }
  ~HeldProduction() { Release(); }
  void Release() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      released_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool producing_ = false;
  bool released_ = false;
  std::thread thread_;
};

TEST(SpanCache, WaitWhileInFlightReturnsOnlyOnceTheProductionIsCached) {
  SpanCache cache(1 << 20);
  cache.WaitWhileInFlight(Key(1, 0), std::chrono::hours(1));  // nothing in flight: at once
  HeldProduction held(cache, Key(1, 0));
  std::atomic<bool> waited{false};
  std::thread waiter([&] {
    cache.WaitWhileInFlight(Key(1, 0), std::chrono::hours(1));
    EXPECT_NE(cache.Lookup(Key(1, 0)), nullptr) << "returned before the span was cached";
    waited = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(waited.load()) << "returned while the span was still being produced";
  held.Release();
  waiter.join();
  EXPECT_TRUE(waited.load());
}

TEST(SpanCache, WaitWhileInFlightGivesUpAfterItsTimeout) {
  SpanCache cache(1 << 20);
  HeldProduction held(cache, Key(1, 0));
  cache.WaitWhileInFlight(Key(1, 0), std::chrono::milliseconds(20));
  EXPECT_EQ(cache.Lookup(Key(1, 0)), nullptr) << "the production was still held back";
  held.Release();
  EXPECT_NE(cache.Lookup(Key(1, 0)), nullptr);
}

TEST(SpanCache, WaitWhileInFlightDoesNotWaitForAPrefetchStillQueued) {
  // A pool thread that waited for a task queued behind it would wait for good: the one
  // thread of this pool is busy, so the prefetch cannot start until the test lets it.
  SpanCache cache(1 << 20);
  ThreadPool pool(1);
  std::mutex mu;
  std::condition_variable cv;
  bool release = false;
  pool.Submit([&] {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return release; });
  });
  cache.Prefetch(
      Key(1, 0), [] { return Result<SpanPtr>(MakeSpan(100, 'q')); }, pool);
  const auto start = std::chrono::steady_clock::now();
  cache.WaitWhileInFlight(Key(1, 0), std::chrono::seconds(10));
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5))
      << "it waited for a production that could not start";
  EXPECT_EQ(cache.Lookup(Key(1, 0)), nullptr);
  {
    std::lock_guard<std::mutex> lock(mu);
    release = true;
  }
  cv.notify_all();
  auto got = cache.GetOrProduce(Key(1, 0), [] { return Result<SpanPtr>(MakeSpan(1, 'x')); });
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(static_cast<char>((*got)->data.get()[0]), 'q') << "the prefetch produced it";
}

TEST(SpanCache, AClaimedKeyMakesReadersWaitForItsFulfilmentInsteadOfProducing) {
  SpanCache cache(1 << 20);
  ASSERT_TRUE(cache.Claim(Key(1, 0)));
  EXPECT_FALSE(cache.Claim(Key(1, 0))) << "claimed twice";
  std::atomic<bool> produced_here{false};
  Result<SpanPtr> got = Status::Error(EIO, "not yet");
  std::thread reader([&] {
    got = cache.GetOrProduce(Key(1, 0), [&] {
      produced_here = true;
      return Result<SpanPtr>(MakeSpan(10, 'r'));
    });
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  cache.Fulfill(Key(1, 0), MakeSpan(10, 'c'));
  reader.join();
  ASSERT_TRUE(got.ok()) << got.status().message();
  EXPECT_FALSE(produced_here.load());
  EXPECT_EQ(static_cast<char>((*got)->data.get()[0]), 'c');
  EXPECT_NE(cache.Lookup(Key(1, 0)), nullptr);
  EXPECT_FALSE(cache.Claim(Key(1, 0))) << "cached keys cannot be claimed";
}

TEST(SpanCache, AClaimFulfilledWithAnErrorGivesItToTheWaiterAndCachesNothing) {
  SpanCache cache(1 << 20);
  ASSERT_TRUE(cache.Claim(Key(2, 5)));
  Result<SpanPtr> got = MakeSpan(1, 'x');
  std::thread reader([&] {
    got = cache.GetOrProduce(Key(2, 5), [] { return Result<SpanPtr>(MakeSpan(1, 'r')); });
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  cache.Fulfill(Key(2, 5), Status::Error(EAGAIN, "index replaced"));
  reader.join();
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), EAGAIN);
  EXPECT_EQ(cache.Lookup(Key(2, 5)), nullptr);
  EXPECT_TRUE(cache.Claim(Key(2, 5))) << "a failed claim can be claimed again";
  cache.Fulfill(Key(2, 5), Status::Error(EIO, "done"));
}

// Polls `done` for up to kHangLimit.
bool Eventually(const std::function<bool()>& done) {
  const auto deadline = std::chrono::steady_clock::now() + kHangLimit;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

// One GetOrProduce call on its own thread, its answer kept (by value) for the test.
struct Call {
  Result<SpanPtr> got = Status::Error(EIO, "not answered");
  bool threw = false;  // an exception escaped GetOrProduce
};

// A producer that throws `thrown` once a second caller waits for the same key: the waiter
// gets the exception's error (not a hang), and so does the producing caller, as a Status.
template <typename Exception>
void ExpectThrowingProducerFailsEveryone(const Exception& thrown, int code,
                                         const std::string& message_part) {
  auto cache = std::make_shared<SpanCache>(1 << 20);
  auto producer = std::make_shared<Call>();
  auto waiter = std::make_shared<Call>();
  std::atomic<bool> producing{false};
  std::promise<void> produced;
  std::thread producer_thread([&, cache, producer] {
    try {
      producer->got = cache->GetOrProduce(Key(7, 1), [&]() -> Result<SpanPtr> {
        producing = true;
        // The waiter is queued behind this production once it has counted its hit.
        Eventually([&] { return cache->hits() == 1; });
        throw thrown;
      });
    } catch (...) {
      producer->threw = true;
    }
    produced.set_value();
  });
  ASSERT_TRUE(Eventually([&] { return producing.load(); }));
  const bool waiter_answered = FinishesWithin(kHangLimit, [cache, waiter] {
    try {
      waiter->got = cache->GetOrProduce(
          Key(7, 1), [] { return Result<SpanPtr>(Status::Error(EINVAL, "the waiter produced")); });
    } catch (...) {
      waiter->threw = true;
    }
  });
  produced.get_future().wait();
  producer_thread.join();
  EXPECT_FALSE(producer->threw) << "the producer's exception escaped GetOrProduce";
  ASSERT_FALSE(producer->got.ok());
  EXPECT_EQ(producer->got.status().code(), code);
  EXPECT_NE(producer->got.status().message().find(message_part), std::string::npos)
      << producer->got.status().message();
  ASSERT_TRUE(waiter_answered) << "the waiter still waits for a production that threw";
  EXPECT_FALSE(waiter->threw);
  ASSERT_FALSE(waiter->got.ok());
  EXPECT_EQ(waiter->got.status().code(), code) << waiter->got.status().message();

  // Nothing is cached and nothing is left in flight: the next request produces the span.
  EXPECT_EQ(cache->count(), 0u);
  auto later = std::make_shared<Call>();
  ASSERT_TRUE(FinishesWithin(kHangLimit, [cache, later] {
    later->got = cache->GetOrProduce(Key(7, 1), [] { return Result<SpanPtr>(MakeSpan(50, 'n')); });
  })) << "the key was left in flight";
  ASSERT_TRUE(later->got.ok()) << later->got.status().message();
  EXPECT_EQ((*later->got)->size, 50u);
  EXPECT_EQ(static_cast<char>((*later->got)->data.get()[49]), 'n');
  EXPECT_NE(cache->Lookup(Key(7, 1)), nullptr);
}

TEST(SpanCache, AProducerThatThrowsFailsItsWaitersAndALaterClaimSucceeds) {
  ExpectThrowingProducerFailsEveryone(std::bad_alloc(), ENOMEM, "out of memory");
}

TEST(SpanCache, AProducerThatThrowsSomethingElseGivesEIOWithWhatItSaid) {
  ExpectThrowingProducerFailsEveryone(std::runtime_error("decoder table overrun"), EIO,
                                      "decoder table overrun");
}

TEST(SpanCache, APrefetchWhoseProducerThrowsFailsItsWaitersAndTheNextReadProducesTheSpan) {
  // Before the fix the exception left the pool's thread: std::terminate.
  auto cache = std::make_shared<SpanCache>(1 << 20);
  ThreadPool pool(1);
  std::promise<void> gate;  // holds the pool's thread until the waiter is queued
  std::shared_future<void> open = gate.get_future().share();
  pool.Submit([open] { open.wait(); });
  cache->Prefetch(
      Key(3, 3), []() -> Result<SpanPtr> { throw std::bad_alloc(); }, pool);
  auto waiter = std::make_shared<Call>();
  std::atomic<bool> answered{false};
  std::thread waiting([cache, waiter, &answered] {
    waiter->got = cache->GetOrProduce(Key(3, 3), [] { return Result<SpanPtr>(MakeSpan(1, 'w')); });
    answered = true;
  });
  ASSERT_TRUE(Eventually([&] { return cache->hits() == 1; })) << "the waiter did not queue";
  gate.set_value();
  const bool done = Eventually([&] { return answered.load(); });
  if (!done) {
    waiting.detach();  // it holds the cache; the test fails rather than hangs
    FAIL() << "the waiter still waits for a prefetch that threw";
  }
  waiting.join();
  ASSERT_FALSE(waiter->got.ok());
  EXPECT_EQ(waiter->got.status().code(), ENOMEM) << waiter->got.status().message();
  auto again = cache->GetOrProduce(Key(3, 3), [] { return Result<SpanPtr>(MakeSpan(3, 'a')); });
  ASSERT_TRUE(again.ok()) << again.status().message();
  EXPECT_EQ(static_cast<char>((*again)->data.get()[2]), 'a');
}

TEST(SpanClaims, KeysStillHeldWhenTheirHolderUnwindsAreFailedAndCanBeClaimedAgain) {
  auto cache = std::make_shared<SpanCache>(1 << 20);
  auto waiter = std::make_shared<Call>();
  std::atomic<bool> answered{false};
  std::thread waiting;
  try {
    SpanClaims claims(*cache);
    ASSERT_TRUE(claims.Claim(Key(4, 0)));
    ASSERT_TRUE(claims.Claim(Key(4, 1)));
    EXPECT_FALSE(claims.Claim(Key(4, 1))) << "claimed twice";
    ASSERT_EQ(claims.size(), 2u);
    EXPECT_EQ(claims.key(1), Key(4, 1));
    claims.Fulfill(0, MakeSpan(10, 'f'));
    waiting = std::thread([cache, waiter, &answered] {
      waiter->got =
          cache->GetOrProduce(Key(4, 1), [] { return Result<SpanPtr>(MakeSpan(1, 'w')); });
      answered = true;
    });
    ASSERT_TRUE(Eventually([&] { return cache->hits() == 1; }));
    throw std::bad_alloc();  // the producer fails between its claims
  } catch (const std::bad_alloc&) {
  }
  const bool done = Eventually([&] { return answered.load(); });
  if (!done) {
    waiting.detach();
    FAIL() << "the waiter still waits for a key whose claim was dropped";
  }
  waiting.join();
  ASSERT_FALSE(waiter->got.ok());
  EXPECT_EQ(waiter->got.status().code(), EIO) << waiter->got.status().message();
  EXPECT_NE(cache->Lookup(Key(4, 0)), nullptr) << "the fulfilled key is cached";
  EXPECT_EQ(cache->Lookup(Key(4, 1)), nullptr);
  SpanClaims again(*cache);
  ASSERT_TRUE(again.Claim(Key(4, 1))) << "a failed key can be claimed again";
  again.FailRest(Status::Error(EAGAIN, "look up again"));
  again.Fulfill(0, MakeSpan(1, 'x'));  // completed already: left as it is
  EXPECT_EQ(cache->Lookup(Key(4, 1)), nullptr);
}

// A deflated member of a zip written here, with its index built (every span known), read
// through the Archive API while decoders fail to allocate.
class DeflatedFaults : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::TempDir();  // NOLINT: the suite's, deleted in TearDownTestSuite
    plain_ = new std::string();     // NOLINT: as dir_
    // 24 MiB of text-like bytes: deflates to blocks of a few KiB, checkpoints at their
    // boundaries, so spans are decoded by the fast engine (as the kernel's readahead gets).
    uint32_t x = 12345;
    while (plain_->size() < (size_t{24} << 20)) {
      x = x * 1103515245u + 12345u;
      *plain_ += std::to_string((x >> 16) % 5000) + ((x >> 8) % 7 == 0 ? "\n" : " ");
    }
    plain_->resize(size_t{24} << 20);
    z_stream zs{};
    ASSERT_EQ(deflateInit2(&zs, 6, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY), Z_OK);
    std::string raw(deflateBound(&zs, plain_->size()), '\0');
    zs.next_in = reinterpret_cast<Bytef*>(plain_->data());
    zs.avail_in = static_cast<uInt>(plain_->size());
    zs.next_out = reinterpret_cast<Bytef*>(raw.data());
    zs.avail_out = static_cast<uInt>(raw.size());
    ASSERT_EQ(deflate(&zs, Z_FINISH), Z_STREAM_END);
    raw.resize(zs.total_out);
    deflateEnd(&zs);
    const uint32_t crc = static_cast<uint32_t>(
        crc32(0, reinterpret_cast<const Bytef*>(plain_->data()), plain_->size()));
    testing::WriteRawDeflateZip(dir_->Join("text.zip"), "text.txt", raw, crc, plain_->size());
  }
  static void TearDownTestSuite() {
    delete dir_;    // NOLINT
    delete plain_;  // NOLINT
  }
  void TearDown() override { g_faults_armed = 0; }

  // A fresh Archive (its own span cache) with the member's index built, and a reader of it.
  // With no parked streams, every span's decode starts a decoder (which allocates).
  std::pair<std::shared_ptr<Archive>, std::shared_ptr<MemberReader>> OpenIndexed(
      size_t max_parked_streams = 16) {
    ArchiveOptions o;
    o.checkpoint_spacing = 256 << 10;
    o.index_enabled = false;
    o.background_index = false;
    o.max_parked_streams = max_parked_streams;
    auto archive = Archive::Open(dir_->Join("text.zip"), o);
    EXPECT_TRUE(archive.ok()) << archive.status().message();
    if (!archive.ok()) return {};
    Status built = (*archive)->BuildIndex(0);
    EXPECT_TRUE(built.ok()) << built.message();
    EXPECT_EQ((*archive)->index_state(0), IndexState::kComplete);
    auto reader = (*archive)->OpenMember(0);
    EXPECT_TRUE(reader.ok()) << reader.status().message();
    if (!reader.ok()) return {};
    return {*archive, *reader};
  }

  static testing::TempDir* dir_;
  static std::string* plain_;
};
testing::TempDir* DeflatedFaults::dir_ = nullptr;
std::string* DeflatedFaults::plain_ = nullptr;

// What one read on a thread of its own answered.
struct ReadCall {
  std::string buf;
  Result<size_t> got = Status::Error(EIO, "not answered");
  bool threw = false;  // an exception escaped ReadAt
};

TEST_F(DeflatedFaults, AReadWhoseDecoderCannotAllocateFailsWithENOMEMAndTheNextReadServesIt) {
  auto [archive, reader] = OpenIndexed();
  ASSERT_NE(reader, nullptr);
  // A small read in the middle: one span, decoded by this read (no read-ahead).
  static constexpr uint64_t kOffset = (uint64_t{13} << 20) + 4321;
  auto read = [archive = archive, reader = reader](const std::shared_ptr<ReadCall>& call) {
    return [archive, reader, call] {
      try {
        call->got = reader->ReadAt(kOffset, std::as_writable_bytes(std::span(call->buf)));
      } catch (...) {
        call->threw = true;
      }
    };
  };
  auto first = std::make_shared<ReadCall>();
  first->buf.assign(4096, '\0');
  g_faults_fired = 0;
  g_faults_armed = 1;
  ASSERT_TRUE(FinishesWithin(kHangLimit, read(first)));
  EXPECT_EQ(g_faults_fired.load(), 1) << "the decoder did not allocate its input buffer";
  EXPECT_FALSE(first->threw) << "std::bad_alloc escaped the read";
  ASSERT_FALSE(first->got.ok());
  EXPECT_EQ(first->got.status().code(), ENOMEM) << first->got.status().message();

  auto second = std::make_shared<ReadCall>();
  second->buf.assign(4096, '\0');
  ASSERT_TRUE(FinishesWithin(kHangLimit, read(second)))
      << "the next read waits for the span that failed";
  ASSERT_TRUE(second->got.ok()) << second->got.status().message();
  ASSERT_EQ(*second->got, 4096u);
  EXPECT_TRUE(second->buf == plain_->substr(kOffset, 4096)) << "wrong bytes";
}

TEST_F(DeflatedFaults, AStreamingReadSurvivesADecodePoolTaskThatCannotAllocate) {
  // A streaming reader's spans are decoded ahead in runs claimed in the cache by
  // DecodePool tasks (deflated_member.h). A task whose decoder cannot allocate fails its
  // claims: the reader gets ENOMEM for that span at most once, reads it again, and gets
  // every byte right. Before the fix the exception ended the process.
  auto [archive, reader] = OpenIndexed(/*max_parked_streams=*/0);
  ASSERT_NE(reader, nullptr);
  struct Outcome {
    std::string got;
    int enomem = 0;
    int other_errors = 0;
    std::string last_error;
  };
  auto out = std::make_shared<Outcome>();
  g_faults_fired = 0;
  const bool finished =
      FinishesWithin(std::chrono::seconds(60), [archive = archive, reader = reader, out] {
        t_fault_exempt = true;  // only the pool's threads fail
        std::string buf(128 << 10, '\0');
        out->got.reserve(reader->size());
        bool armed = false;
        for (uint64_t off = 0; off < reader->size();) {
          if (!armed && off >= (uint64_t{5} << 20)) {  // streaming by now
            g_faults_armed = 1;
            armed = true;
          }
          auto got = reader->ReadAt(off, std::as_writable_bytes(std::span(buf)));
          if (!got.ok()) {
            (got.status().code() == ENOMEM ? out->enomem : out->other_errors) += 1;
            out->last_error = got.status().message();
            if (out->enomem + out->other_errors > 3) return;
            continue;  // the same request again
          }
          out->got.append(buf.data(), *got);
          off += *got;
        }
      });
  g_faults_armed = 0;
  ASSERT_TRUE(finished) << "the streaming read hangs";
  EXPECT_EQ(g_faults_fired.load(), 1) << "no DecodePool task allocated a decoder";
  EXPECT_LE(out->enomem, 1);
  EXPECT_EQ(out->other_errors, 0) << out->last_error;
  EXPECT_TRUE(out->got == *plain_) << "wrong bytes (" << out->got.size() << " read)";
}

TEST(SpanBuffers, ARecycledBufferIsReusedOnlyWhenItFitsWithoutWastingHalf) {
  std::byte* first = nullptr;
  {
    auto a = AllocateSpanBuffer(3 << 20);
    ASSERT_TRUE(a.ok());
    first = a->get();
    EXPECT_GE(a->get_deleter().capacity, size_t{3} << 20);
  }  // back to the free list
  auto tiny = AllocateSpanBuffer(1000);
  ASSERT_TRUE(tiny.ok());
  EXPECT_NE(tiny->get(), first) << "a 3 MiB buffer must not serve a 1000-byte request";
  auto again = AllocateSpanBuffer(2 << 20);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->get(), first);
  EXPECT_GE(again->get_deleter().capacity, size_t{2} << 20);
}

}  // namespace
}  // namespace npzfs

// The allocation faults above (AllocateOrFault). Every form of new and delete is replaced,
// so that under AddressSanitizer what new returns is freed by the matching delete.
void* operator new(std::size_t n) { return npzfs::AllocateOrFault(n); }
void* operator new[](std::size_t n) { return npzfs::AllocateOrFault(n); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  return std::malloc(n == 0 ? 1 : n);
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
  return std::malloc(n == 0 ? 1 : n);
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
