#include "core/read/read_pools.h"

#include <sched.h>

namespace npzfs {

ThreadPool& VerifyPool() {
  static ThreadPool* pool = new ThreadPool(1);  // NOLINT: lives until exit, see the header
  return *pool;
}

ThreadPool& DecodePool() {
  static ThreadPool* pool = new ThreadPool(0);  // NOLINT: lives until exit, see the header
  return *pool;
}

ThreadPool& IndexPool() {
  static ThreadPool* pool = [] {
    auto* p = new ThreadPool(1);  // NOLINT: lives until exit, see the header
    // The pool's one thread lowers itself before any other task runs (FIFO). If the policy
    // cannot be set, the indexer just runs at normal priority.
    p->Submit([] {
      struct sched_param param {};
      sched_setscheduler(0, SCHED_IDLE, &param);
    });
    return p;
  }();
  return *pool;
}

}  // namespace npzfs
