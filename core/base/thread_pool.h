// A fixed pool of worker threads for short CPU-bound tasks: span decodes ahead of a reader,
// chunks of a parallel deflate, a stored member's verify pass.
//
// Tasks run in submission order (FIFO) on `size()` threads. A TaskGroup waits for the tasks
// submitted through it, so one caller can fan work out and join it without waiting for other
// callers' tasks. Tasks must not block on other tasks of the same pool (no nesting): a pool
// whose every thread waits would deadlock.
//
// An exception that escapes a task ends the process (std::terminate), as before: the pool
// cannot know who else waits for the task's work, and a daemon that stops is better than
// readers that wait forever. Work that hands a result to waiters catches its own exceptions
// (SpanCache::Produce turns them into a Status with ExceptionStatus).
//
// Ownership: the pool owns its threads; the destructor runs every queued task, then joins.
// Threads: Submit, TaskGroup::Run and TaskGroup::Wait are thread-safe.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "npzfs/status.h"

namespace npzfs {

// The error for an exception caught where work hands over a Status (a span's producer):
// ENOMEM for std::bad_alloc, EIO otherwise (with what() when it is a std::exception).
// Allocates nothing it cannot do without (an out-of-memory failure to build the message
// gives the plain error).
Status ExceptionStatus(const std::exception_ptr& e) noexcept;

class ThreadPool {
 public:
  // `threads` workers; 0 means one per online CPU (at least 1).
  explicit ThreadPool(size_t threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  void Submit(std::function<void()> task);
  size_t size() const { return workers_.size(); }
  // Tasks queued and not yet started.
  size_t queued() const;

  // The number of online CPUs (sysconf), at least 1.
  static size_t OnlineCpus();

 private:
  void WorkerLoop();

  mutable std::mutex mu_;  // guards queue_ and stopping_; a leaf lock
  std::condition_variable wake_;
  std::deque<std::function<void()>> queue_;
  bool stopping_ = false;
  std::vector<std::thread> workers_;
};

// Tasks submitted to one pool as a batch; Wait returns once all of them have finished.
// The group must outlive its tasks: Wait before destroying it (the destructor waits too).
class TaskGroup {
 public:
  explicit TaskGroup(ThreadPool& pool) : pool_(pool) {}
  ~TaskGroup() { Wait(); }
  TaskGroup(const TaskGroup&) = delete;
  TaskGroup& operator=(const TaskGroup&) = delete;

  void Run(std::function<void()> task);
  void Wait();

 private:
  ThreadPool& pool_;
  std::mutex mu_;  // guards pending_; a leaf lock
  std::condition_variable done_;
  size_t pending_ = 0;
};

}  // namespace npzfs
