// Parked live decoder streams: a bounded set keyed by (member id, resume position), least
// recently parked evicted first. A reader that continues where a stream stopped takes it,
// so a sequential reader never restores from a checkpoint twice.
//
// T is a stream type with resume_pos() (the offset of the next byte it returns) and ended().
// Ownership: the pool owns parked streams; Take hands one out exclusively. Threads: every
// method is thread-safe; mu_ is a leaf lock, never held while decoding, and evicted streams
// are destroyed after it is released.
#pragma once

#include <cstddef>
#include <cstdint>
#include <iterator>
#include <list>
#include <memory>
#include <mutex>

namespace npzfs {

template <typename T>
class StreamPool {
 public:
  explicit StreamPool(size_t capacity) : capacity_(capacity) {}

  // Removes and returns a stream of `member` whose resume_pos() == pos, or null.
  std::unique_ptr<T> Take(uint64_t member, uint64_t pos) {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = parked_.begin(); it != parked_.end(); ++it) {
      if (it->member == member && it->pos == pos) return Remove(it);
    }
    return nullptr;
  }

  // Removes and returns the stream of `member` with the largest resume_pos() in
  // [pos - max_behind, pos], or null.
  std::unique_ptr<T> TakeBehind(uint64_t member, uint64_t pos, uint64_t max_behind) {
    std::lock_guard<std::mutex> lock(mu_);
    auto best = parked_.end();
    for (auto it = parked_.begin(); it != parked_.end(); ++it) {
      if (it->member != member || it->pos > pos || pos - it->pos > max_behind) continue;
      if (best == parked_.end() || it->pos > best->pos) best = it;
    }
    return best == parked_.end() ? nullptr : Remove(best);
  }

  // Parks `stream` (ended streams are dropped).
  void Park(uint64_t member, std::unique_ptr<T> stream) {
    if (stream == nullptr || stream->ended() || capacity_ == 0) return;
    std::list<Parked> evicted;  // destroyed after the lock is released
    {
      std::lock_guard<std::mutex> lock(mu_);
      const uint64_t pos = stream->resume_pos();
      parked_.push_front(Parked{member, pos, std::move(stream)});
      while (parked_.size() > capacity_) {
        evicted.splice(evicted.begin(), parked_, std::prev(parked_.end()));
      }
    }
  }

  // Drops every parked stream of `member`.
  void Forget(uint64_t member) {
    std::list<Parked> dropped;
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = parked_.begin(); it != parked_.end();) {
      auto next = std::next(it);
      if (it->member == member) dropped.splice(dropped.begin(), parked_, it);
      it = next;
    }
  }

  size_t size() const {
    std::lock_guard<std::mutex> lock(mu_);
    return parked_.size();
  }

 private:
  struct Parked {
    uint64_t member;
    uint64_t pos;
    std::unique_ptr<T> stream;
  };
  // Requires mu_.
  std::unique_ptr<T> Remove(typename std::list<Parked>::iterator it) {
    std::unique_ptr<T> s = std::move(it->stream);
    parked_.erase(it);
    return s;
  }

  const size_t capacity_;
  mutable std::mutex mu_;     // guards parked_
  std::list<Parked> parked_;  // most recently parked first
};

}  // namespace npzfs
