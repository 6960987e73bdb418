#include "core/base/mount_table.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace npzfs {
namespace {

// /tmp/p/a is a bind of itself made shared (peer group 7), /tmp/p/b a bind of it (a peer),
// /tmp/p/s a slave of that group; npzfs was mounted at /tmp/p/a/mnt and propagation made
// the copies at /tmp/p/b/mnt and /tmp/p/s/mnt; /tmp/x is a bind mount the user made of it.
constexpr const char* kTable =
    "21 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
    "40 21 254:0 /tmp/p/a /tmp/p/a rw,relatime shared:7 - ext4 /dev/vda rw\n"
    "41 21 254:0 /tmp/p/a /tmp/p/b rw,relatime shared:7 - ext4 /dev/vda rw\n"
    "42 21 254:0 /tmp/p/a /tmp/p/s rw,relatime master:7 - ext4 /dev/vda rw\n"
    "50 40 0:51 / /tmp/p/a/mnt rw,nosuid,nodev shared:9 - fuse.npzfs /tmp/p/d.npz rw\n"
    "51 41 0:51 / /tmp/p/b/mnt rw,nosuid,nodev shared:9 - fuse.npzfs /tmp/p/d.npz rw\n"
    "52 42 0:51 / /tmp/p/s/mnt rw,nosuid,nodev master:9 - fuse.npzfs /tmp/p/d.npz rw\n"
    "53 21 0:51 / /tmp/x rw,nosuid,nodev shared:9 - fuse.npzfs /tmp/p/d.npz rw\n"
    "60 21 0:60 / /tmp/y\\040z rw - tmpfs tmpfs rw\n";

const MountEntry& At(const std::vector<MountEntry>& table, const std::string& mount_point) {
  for (const MountEntry& e : table) {
    if (e.mount_point == mount_point) return e;
  }
  ADD_FAILURE() << mount_point << " not in the table";
  return table.front();
}

TEST(MountTable, ParsesIdsPropagationAndEscapedNames) {
  const std::vector<MountEntry> table = ParseMountInfo(kTable);
  ASSERT_EQ(table.size(), 9u);
  const MountEntry& mnt = At(table, "/tmp/p/a/mnt");
  EXPECT_EQ(mnt.id, "50");
  EXPECT_EQ(mnt.parent_id, "40");
  EXPECT_EQ(mnt.device, "0:51");
  EXPECT_EQ(mnt.fstype, kNpzfsMountType);
  EXPECT_EQ(mnt.source, "/tmp/p/d.npz");
  EXPECT_EQ(mnt.propagation, std::vector<std::string>{"shared:9"});
  EXPECT_EQ(At(table, "/tmp/y z").propagation, std::vector<std::string>{});
  EXPECT_EQ(FindMount(table, "/tmp/y z")->fstype, "tmpfs");
}

TEST(MountTable, AFuseMountsOwnerIsItsUserIdOption) {
  const std::vector<MountEntry> table = ParseMountInfo(
      "50 40 0:51 / /m rw shared:9 - fuse.npzfs /d.npz rw,user_id=1000,group_id=1000\n"
      "51 40 0:52 / /n rw - fuse.npzfs /e.npz rw,group_id=0,user_id=0\n"
      "52 40 0:53 / /o rw - tmpfs tmpfs rw\n"
      "53 40 0:54 / /p rw - fuse.x x rw,user_id=99999999999\n");
  ASSERT_EQ(table.size(), 4u);
  EXPECT_EQ(table[0].super_options, "rw,user_id=1000,group_id=1000");
  EXPECT_EQ(table[0].fuse_owner(), std::optional<uint32_t>(1000));
  EXPECT_EQ(table[1].fuse_owner(), std::optional<uint32_t>(0));
  EXPECT_EQ(table[2].fuse_owner(), std::nullopt);
  EXPECT_EQ(table[3].fuse_owner(), std::nullopt);  // not a uid
}

TEST(MountTable, CopiesMadeByPropagationAreToldFromBindMountsTheUserMade) {
  const std::vector<MountEntry> table = ParseMountInfo(kTable);
  const MountEntry& mnt = At(table, "/tmp/p/a/mnt");
  EXPECT_TRUE(IsPropagatedCopy(At(table, "/tmp/p/b/mnt"), mnt, table));  // under a peer
  EXPECT_TRUE(IsPropagatedCopy(At(table, "/tmp/p/s/mnt"), mnt, table));  // under a slave
  EXPECT_FALSE(IsPropagatedCopy(At(table, "/tmp/x"), mnt, table));       // the user's bind
  EXPECT_FALSE(IsPropagatedCopy(mnt, mnt, table));
  // Propagation goes from a master to its slaves only: the original is no copy of the
  // slave's mount, and unmounting that one would leave the original.
  EXPECT_FALSE(IsPropagatedCopy(mnt, At(table, "/tmp/p/s/mnt"), table));
  EXPECT_TRUE(IsPropagatedCopy(mnt, At(table, "/tmp/p/b/mnt"), table));  // peers: both ways
}

TEST(MountTable, AMountAtAnotherPlaceOfAPeerIsNoCopy) {
  const std::vector<MountEntry> table = ParseMountInfo(
      "21 1 254:0 / / rw shared:1 - ext4 /dev/vda rw\n"
      "40 21 254:0 /tmp/p/a /tmp/p/a rw shared:7 - ext4 /dev/vda rw\n"
      "41 21 254:0 /tmp/p/a /tmp/p/b rw shared:7 - ext4 /dev/vda rw\n"
      "50 40 0:51 / /tmp/p/a/mnt rw shared:9 - fuse.npzfs /d.npz rw\n"
      "51 41 0:51 / /tmp/p/b/other rw shared:9 - fuse.npzfs /d.npz rw\n");
  EXPECT_FALSE(IsPropagatedCopy(At(table, "/tmp/p/b/other"), At(table, "/tmp/p/a/mnt"), table));
}

}  // namespace
}  // namespace npzfs
