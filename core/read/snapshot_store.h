// The fast path's resume points for every member of one archive: saved decoder states taken
// while a reader runs ahead of the checkpoints (core/read/deflated_member.h). They are a
// cache like the span cache: a bounded number of bytes, least recently used evicted first,
// and a member's are dropped once checkpoints cover their positions.
//
// Threads: every method is thread-safe; mu_ is a leaf lock. Snapshots are immutable and
// shared: an evicted snapshot lives on while a restore still reads it.
#pragma once

#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "core/read/decode_stream.h"

namespace npzfs {

class SnapshotStore {
 public:
  using SnapshotPtr = std::shared_ptr<const DecodeStream::Snapshot>;

  explicit SnapshotStore(uint64_t budget_bytes) : budget_(budget_bytes) {}

  // The snapshot of `member` with the largest position (out) at or before `pos`, or null.
  SnapshotPtr Before(uint64_t member, uint64_t pos);
  bool Has(uint64_t member, uint64_t out) const;
  // Keeps `snap` (replacing one at the same position) and evicts down to the budget.
  void Insert(uint64_t member, SnapshotPtr snap);
  // Drops the member's snapshots at positions <= `out`.
  void DropUpTo(uint64_t member, uint64_t out);

  uint64_t bytes() const;
  size_t count() const;

 private:
  using Key = std::pair<uint64_t, uint64_t>;  // (member, out)
  struct Entry {
    SnapshotPtr snap;
    std::list<Key>::iterator lru;
  };
  // Requires mu_.
  void EraseLocked(std::map<Key, Entry>::iterator it, std::vector<SnapshotPtr>* dropped);

  const uint64_t budget_;
  mutable std::mutex mu_;
  std::map<Key, Entry> entries_;
  std::list<Key> lru_;  // most recently used first
  uint64_t bytes_ = 0;
};

}  // namespace npzfs
