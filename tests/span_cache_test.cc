// Tests of the shared span cache: budget and LRU eviction, de-duplication of work in flight,
// errors, and the span buffer free list.
#include "core/read/span_cache.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

namespace npzfs {
namespace {

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
