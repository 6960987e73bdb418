// Tests of SnapshotStore (core/read/snapshot_store.h): lookups, and eviction that thins the
// resume points evenly instead of dropping whole regions.
#include "core/read/snapshot_store.h"

#include <gtest/gtest.h>

#include <memory>
#include <vector>

namespace npzfs {
namespace {

class FakeState final : public InflateEngine::State {
 public:
  size_t memory() const override { return 936; }  // + 64: 1000 bytes a snapshot
};

SnapshotStore::SnapshotPtr Snap(uint64_t out) {
  auto snap = std::make_shared<DecodeStream::Snapshot>();
  snap->state = std::make_shared<FakeState>();
  snap->out = out;
  return snap;
}

// The positions the store holds for `member`, found through Before.
std::vector<uint64_t> Positions(SnapshotStore& store, uint64_t member, uint64_t end) {
  std::vector<uint64_t> at;
  for (uint64_t pos = end;;) {
    SnapshotStore::SnapshotPtr s = store.Before(member, pos);
    if (s == nullptr) break;
    at.insert(at.begin(), s->out);
    if (s->out == 0) break;
    pos = s->out - 1;
  }
  return at;
}

TEST(SnapshotStore, BeforeFindsTheClosestSnapshotAtOrBeforeAPositionOfTheSameMember) {
  SnapshotStore store(100000);
  store.Insert(1, Snap(10));
  store.Insert(1, Snap(30));
  store.Insert(2, Snap(20));
  EXPECT_EQ(store.Before(1, 9), nullptr);
  EXPECT_EQ(store.Before(1, 10)->out, 10u);
  EXPECT_EQ(store.Before(1, 29)->out, 10u);
  EXPECT_EQ(store.Before(1, 1000)->out, 30u);
  EXPECT_EQ(store.Before(2, 1000)->out, 20u);
  EXPECT_EQ(store.Before(3, 1000), nullptr);
  EXPECT_TRUE(store.Has(1, 30));
  EXPECT_FALSE(store.Has(2, 30));
}

TEST(SnapshotStore, OverTheBudgetItThinsEvenlyAndKeepsTheFarthest) {
  constexpr uint64_t kStep = 2 << 20;
  SnapshotStore store(25 * 1000);
  for (uint64_t k = 1; k <= 100; ++k) store.Insert(7, Snap(k * kStep));
  EXPECT_LE(store.bytes(), 25u * 1000);
  const std::vector<uint64_t> at = Positions(store, 7, UINT64_MAX);
  ASSERT_EQ(at.size(), store.count());
  ASSERT_GE(at.size(), 20u);
  EXPECT_EQ(at.back(), 100 * kStep) << "the farthest resume point stays";
  // 25 points over 200 MiB: every 8 MiB if perfectly even. Least recently used first would
  // have kept only the last 25, leaving the first 150 MiB without any.
  uint64_t prev = 0, widest = 0;
  for (uint64_t p : at) {
    widest = std::max(widest, p - prev);
    prev = p;
  }
  EXPECT_LE(widest, 16 * kStep / 2) << "a gap of " << (widest >> 20) << " MiB";
}

TEST(SnapshotStore, AMembersOnlySnapshotOutlivesAnotherMembersMany) {
  SnapshotStore store(10 * 1000);
  store.Insert(1, Snap(5));
  for (uint64_t k = 1; k <= 50; ++k) store.Insert(2, Snap(k * 100));
  EXPECT_LE(store.count(), 10u);
  ASSERT_NE(store.Before(1, 1000), nullptr);
  EXPECT_EQ(store.Before(1, 1000)->out, 5u);
  EXPECT_EQ(store.Before(2, UINT64_MAX)->out, 5000u);
}

TEST(SnapshotStore, DropUpToRemovesOnlyThatMembersCoveredSnapshots) {
  SnapshotStore store(100000);
  for (uint64_t k = 1; k <= 5; ++k) store.Insert(1, Snap(k * 10));
  store.Insert(2, Snap(10));
  store.DropUpTo(1, 30);
  EXPECT_EQ(Positions(store, 1, UINT64_MAX), (std::vector<uint64_t>{40, 50}));
  EXPECT_EQ(Positions(store, 2, UINT64_MAX), (std::vector<uint64_t>{10}));
  EXPECT_EQ(store.bytes(), 3u * 1000);
}

}  // namespace
}  // namespace npzfs
