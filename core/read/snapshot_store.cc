#include "core/read/snapshot_store.h"

#include <vector>

namespace npzfs {

SnapshotStore::SnapshotPtr SnapshotStore::Before(uint64_t member, uint64_t pos) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.upper_bound(Key{member, pos});
  if (it == entries_.begin()) return nullptr;
  --it;
  if (it->first.first != member) return nullptr;
  return it->second;
}

bool SnapshotStore::Has(uint64_t member, uint64_t out) const {
  std::lock_guard<std::mutex> lock(mu_);
  return entries_.count(Key{member, out}) > 0;
}

void SnapshotStore::EraseLocked(std::map<Key, SnapshotPtr>::iterator it,
                                std::vector<SnapshotPtr>* dropped) {
  dropped->push_back(it->second);  // may throw: before anything changes
  bytes_ -= it->second->memory();
  entries_.erase(it);
}

std::map<SnapshotStore::Key, SnapshotStore::SnapshotPtr>::iterator SnapshotStore::VictimLocked() {
  // The one (not the last of its member) whose neighbours are closest: the smallest gap
  // its removal leaves. A member's first snapshot has position 0 before it.
  auto victim = entries_.begin();
  uint64_t best = UINT64_MAX;
  for (auto it = entries_.begin(); it != entries_.end(); ++it) {
    auto next = std::next(it);
    if (next == entries_.end() || next->first.first != it->first.first) continue;
    uint64_t prev_out = 0;
    if (it != entries_.begin()) {
      auto prev = std::prev(it);
      if (prev->first.first == it->first.first) prev_out = prev->first.second;
    }
    const uint64_t gap = next->first.second - prev_out;
    if (gap < best) {
      best = gap;
      victim = it;
    }
  }
  return victim;  // every member has one snapshot: the first entry
}

void SnapshotStore::Insert(uint64_t member, SnapshotPtr snap) {
  std::vector<SnapshotPtr> dropped;  // freed after the lock is released
  std::lock_guard<std::mutex> lock(mu_);
  if (snap == nullptr || snap->memory() > budget_) return;
  const Key key{member, snap->out};
  if (auto it = entries_.find(key); it != entries_.end()) EraseLocked(it, &dropped);
  const uint64_t memory = snap->memory();
  entries_.emplace(key, std::move(snap));
  bytes_ += memory;
  while (bytes_ > budget_ && !entries_.empty()) EraseLocked(VictimLocked(), &dropped);
}

void SnapshotStore::DropUpTo(uint64_t member, uint64_t out) {
  std::vector<SnapshotPtr> dropped;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.lower_bound(Key{member, 0});
  while (it != entries_.end() && it->first.first == member && it->first.second <= out) {
    auto next = std::next(it);
    EraseLocked(it, &dropped);
    it = next;
  }
}

uint64_t SnapshotStore::bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return bytes_;
}

size_t SnapshotStore::count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return entries_.size();
}

}  // namespace npzfs
