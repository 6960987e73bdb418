#include "core/base/thread_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <new>
#include <set>
#include <stdexcept>
#include <thread>

namespace npzfs {
namespace {

TEST(ThreadPool, ATaskGroupWaitsForEveryTaskItRan) {
  ThreadPool pool(3);
  std::atomic<int> done{0};
  TaskGroup group(pool);
  for (int i = 0; i < 100; ++i) group.Run([&] { done.fetch_add(1); });
  group.Wait();
  EXPECT_EQ(done.load(), 100);
}

TEST(ThreadPool, TasksRunOnSeveralThreadsAtOnce) {
  ThreadPool pool(2);
  std::mutex mu;
  std::set<std::thread::id> seen;
  std::atomic<int> arrived{0};
  TaskGroup group(pool);
  for (int i = 0; i < 2; ++i) {
    group.Run([&] {
      {
        std::lock_guard<std::mutex> lock(mu);
        seen.insert(std::this_thread::get_id());
      }
      // Both tasks must be running at once for this to finish.
      arrived.fetch_add(1);
      while (arrived.load() < 2) std::this_thread::yield();
    });
  }
  group.Wait();
  EXPECT_EQ(seen.size(), 2u);
}

TEST(ThreadPool, TheDestructorRunsEveryQueuedTask) {
  std::atomic<int> done{0};
  {
    ThreadPool pool(1);
    for (int i = 0; i < 50; ++i) pool.Submit([&] { done.fetch_add(1); });
  }
  EXPECT_EQ(done.load(), 50);
}

TEST(ThreadPool, ExceptionStatusTellsOutOfMemoryFromOtherExceptions) {
  EXPECT_EQ(ExceptionStatus(std::make_exception_ptr(std::bad_alloc())).code(), ENOMEM);
  const Status other = ExceptionStatus(std::make_exception_ptr(std::runtime_error("bad table")));
  EXPECT_EQ(other.code(), EIO);
  EXPECT_NE(other.message().find("bad table"), std::string::npos) << other.message();
  EXPECT_EQ(ExceptionStatus(std::make_exception_ptr(7)).code(), EIO);
  EXPECT_EQ(ExceptionStatus(nullptr).code(), EIO);
}

TEST(ThreadPool, ZeroThreadsMeansOnePerOnlineCpu) {
  ThreadPool pool(0);
  EXPECT_EQ(pool.size(), ThreadPool::OnlineCpus());
  EXPECT_GE(pool.size(), 1u);
}

}  // namespace
}  // namespace npzfs
