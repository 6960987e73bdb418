#include "core/read/read_pools.h"

namespace npzfs {

ThreadPool& VerifyPool() {
  static ThreadPool* pool = new ThreadPool(1);  // NOLINT: lives until exit, see the header
  return *pool;
}

ThreadPool& DecodePool() {
  static ThreadPool* pool = new ThreadPool(0);  // NOLINT: lives until exit, see the header
  return *pool;
}

}  // namespace npzfs
