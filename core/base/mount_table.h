// The kernel's table of mounts as this process sees it (/proc/self/mountinfo): which
// directories are mount points, of which filesystem type, mounted from what. The daemon uses
// it to refuse stacking a mount on a mount point; `npz umount` to touch only npzfs mounts
// (type "fuse.npzfs") and to learn the archive of a mount whose daemon died (the source of
// an npzfs mount is the archive's absolute path).
//
// Plain functions over values: thread-safe.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "npzfs/status.h"

namespace npzfs {

// The filesystem type of an npzfs mount in the mount table (the daemon mounts with
// subtype=npzfs).
inline constexpr std::string_view kNpzfsMountType = "fuse.npzfs";

struct MountEntry {
  std::string id, parent_id;  // mount ids (reused after an unmount: they tell no order)
  std::string mount_point;    // absolute, with the kernel's octal escapes decoded
  std::string device;         // "major:minor" of the filesystem: the same for all its mounts
  std::string root;           // the directory of the filesystem mounted here ("/"; a bind
                              // mount of a subdirectory: "/sub")
  std::string fstype;         // "ext4", "tmpfs", "fuse.npzfs", ...
  std::string source;         // "/dev/sda1", "tmpfs", the archive of an npzfs mount
  std::string mount_options;  // per-mount options: "rw,nosuid,relatime"
  std::string super_options;  // the filesystem's: "rw,user_id=1000,group_id=1000" for FUSE
  // Propagation: "shared:N" (a peer group mounts under this one propagate to), "master:N"
  // (receives the mounts of that peer group); none for a private mount.
  std::vector<std::string> propagation;
  bool read_only() const;  // "ro" among mount_options
  // The uid a FUSE mount was made by ("user_id=" among super_options); nullopt if none.
  std::optional<uint32_t> fuse_owner() const;
};

// Parses mountinfo text (the format of /proc/PID/mountinfo). Lines that do not parse are
// skipped.
std::vector<MountEntry> ParseMountInfo(std::string_view text);

// The mount table of this process, in the order the mounts were made (the kernel lists them
// so). The error names the file.
Result<std::vector<MountEntry>> ReadMountTable();

// The mount on `mount_point` (absolute, canonical) that is visible: the last one listed, as a
// later mount on the same directory hides the earlier ones. nullopt if it is not a mount point.
std::optional<MountEntry> FindMount(const std::vector<MountEntry>& table,
                                    const std::string& mount_point);

// Whether `copy` is a copy of `mount` that mount propagation made, and that unmounting
// `mount` removes with it: its parent is a peer of `mount`'s parent (the same "shared:N")
// or a slave of that peer group ("master:N"), and it sits at the same place of the same
// filesystem. (systemd makes "/" shared, so a bind mount of a directory above a mount point
// gets such copies of every later mount below it.)
bool IsPropagatedCopy(const MountEntry& copy, const MountEntry& mount,
                      const std::vector<MountEntry>& table);

}  // namespace npzfs
