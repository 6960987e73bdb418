#include "core/read/snapshot_store.h"

#include <vector>

namespace npzfs {

SnapshotStore::SnapshotPtr SnapshotStore::Before(uint64_t member, uint64_t pos) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.upper_bound(Key{member, pos});
  if (it == entries_.begin()) return nullptr;
  --it;
  if (it->first.first != member) return nullptr;
  lru_.splice(lru_.begin(), lru_, it->second.lru);
  return it->second.snap;
}

bool SnapshotStore::Has(uint64_t member, uint64_t out) const {
  std::lock_guard<std::mutex> lock(mu_);
  return entries_.count(Key{member, out}) > 0;
}

// Each step allocates before it changes anything, so that std::bad_alloc leaves entries_,
// lru_ and bytes_ in agreement.
void SnapshotStore::EraseLocked(std::map<Key, Entry>::iterator it,
                                std::vector<SnapshotPtr>* dropped) {
  dropped->push_back(std::move(it->second.snap));
  bytes_ -= dropped->back()->memory();
  lru_.erase(it->second.lru);
  entries_.erase(it);
}

void SnapshotStore::Insert(uint64_t member, SnapshotPtr snap) {
  std::vector<SnapshotPtr> dropped;  // freed after the lock is released
  std::lock_guard<std::mutex> lock(mu_);
  if (snap == nullptr || snap->memory() > budget_) return;
  const Key key{member, snap->out};
  if (auto it = entries_.find(key); it != entries_.end()) EraseLocked(it, &dropped);
  const uint64_t memory = snap->memory();
  std::list<Key> node(1, key);  // the LRU entry, moved into lru_ once entries_ has it
  entries_.emplace(key, Entry{std::move(snap), node.begin()});
  lru_.splice(lru_.begin(), node);
  bytes_ += memory;
  while (bytes_ > budget_ && !lru_.empty()) EraseLocked(entries_.find(lru_.back()), &dropped);
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
