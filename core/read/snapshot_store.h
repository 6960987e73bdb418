// The fast path's resume points for every member of one archive: saved decoder states taken
// while a reader runs ahead of the checkpoints (core/read/deflated_member.h). A bounded number
// of bytes; a member's are dropped once checkpoints cover their positions.
//
// Eviction thins evenly: over the budget, the snapshot dropped is the one whose two
// neighbours (in the same member) lie closest together, so the resume points that remain
// are spread over all the positions ever reached, and the farthest one of each member stays.
// (Least recently used first, the rule before speculation split first passes between
// cores, dropped whole regions: a 1 GiB member with snapshots every 2 MiB needs 27 MB
// where the store has 16, and the frames behind the frontier then decoded from up to
// hundreds of MiB back.)
//
// Threads: every method is thread-safe; mu_ is a leaf lock. Snapshots are immutable and
// shared: an evicted snapshot lives on while a restore still reads it.
#pragma once

#include <cstdint>
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
  // Keeps `snap` (replacing one at the same position) and thins down to the budget.
  void Insert(uint64_t member, SnapshotPtr snap);
  // Drops the member's snapshots at positions <= `out`.
  void DropUpTo(uint64_t member, uint64_t out);

  uint64_t bytes() const;
  size_t count() const;

 private:
  using Key = std::pair<uint64_t, uint64_t>;  // (member, out)
  // Requires mu_.
  void EraseLocked(std::map<Key, SnapshotPtr>::iterator it, std::vector<SnapshotPtr>* dropped);
  std::map<Key, SnapshotPtr>::iterator VictimLocked();

  const uint64_t budget_;
  mutable std::mutex mu_;
  std::map<Key, SnapshotPtr> entries_;
  uint64_t bytes_ = 0;
};

}  // namespace npzfs
