#include "core/base/thread_pool.h"

#include <unistd.h>

#include <new>
#include <string>

namespace npzfs {

Status ExceptionStatus(const std::exception_ptr& e) noexcept {
  // The fallbacks' messages are short enough for std::string to hold without allocating.
  if (e == nullptr) return Status::Error(EIO, "no exception");
  try {
    std::rethrow_exception(e);
  } catch (const std::bad_alloc&) {
    return Status::Error(ENOMEM, "out of memory");
  } catch (const std::exception& x) {
    try {
      return Status::Error(EIO, std::string("exception: ") + x.what());
    } catch (...) {
      return Status::Error(EIO, "exception");
    }
  } catch (...) {
  }
  return Status::Error(EIO, "exception");
}

size_t ThreadPool::OnlineCpus() {
  const long n = ::sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? static_cast<size_t>(n) : 1;
}

ThreadPool::ThreadPool(size_t threads) {
  if (threads == 0) threads = OnlineCpus();
  workers_.reserve(threads);
  for (size_t i = 0; i < threads; ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  wake_.notify_all();
  for (std::thread& t : workers_) t.join();
}

void ThreadPool::Submit(std::function<void()> task) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.push_back(std::move(task));
  }
  wake_.notify_one();
}

size_t ThreadPool::queued() const {
  std::lock_guard<std::mutex> lock(mu_);
  return queue_.size();
}

void ThreadPool::WorkerLoop() {
  while (true) {
    std::function<void()> task;
    {
      std::unique_lock<std::mutex> lock(mu_);
      wake_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, and every queued task has run
      task = std::move(queue_.front());
      queue_.pop_front();
    }
    task();
  }
}

void TaskGroup::Run(std::function<void()> task) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++pending_;
  }
  pool_.Submit([this, task = std::move(task)] {
    task();
    std::lock_guard<std::mutex> lock(mu_);
    if (--pending_ == 0) done_.notify_all();
  });
}

void TaskGroup::Wait() {
  std::unique_lock<std::mutex> lock(mu_);
  done_.wait(lock, [this] { return pending_ == 0; });
}

}  // namespace npzfs
