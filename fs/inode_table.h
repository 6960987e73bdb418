// The directory tree the mount shows, and the FUSE inode numbers of its nodes.
//
// Archived members are added once at start from Archive::members() (their paths are already
// sanitized by core); "a/b.npy" creates the directory "a". New members (create/mknod) and
// new directories (mkdir) are added while the mount runs. Inode numbers are never reused:
// a node lives as long as the table (a member can only be unlinked while it holds no data,
// and then its node is only detached from its parent), so a stale inode the kernel still
// remembers always resolves to a valid node. nlookup is still counted as the protocol asks
// (lookup/create/readdirplus increment, forget decrements), and a forget of more than was
// looked up is reported (Forget), so that a miscount shows up in the log.
//
// A growing node holds the GrowingMember object itself, which a rename never replaces
// (core/write/spool.h), so the table and the spool cannot disagree about which member a
// node is.
//
// Thread safety: every method takes the table's shared_mutex (shared for lookups, exclusive
// for changes) and returns copies (NodeInfo), so callers never hold a pointer into the table
// or the lock while they reply to the kernel. Lock order: the table lock is a leaf; no other
// lock is taken while holding it.
#pragma once

#include <fuse_lowlevel.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <shared_mutex>
#include <string>
#include <vector>

#include "core/write/growing_member.h"
#include "npzfs/status.h"

namespace npzfs::fs {

enum class NodeKind { kDirectory, kArchived, kGrowing };

// A snapshot of one node, safe to use after the table lock is released.
struct NodeInfo {
  fuse_ino_t ino = 0;
  NodeKind kind = NodeKind::kDirectory;
  std::string path;                        // member path, "" for the root
  size_t member_index = 0;                 // kArchived: index into Archive::members()
  std::shared_ptr<GrowingMember> growing;  // kGrowing; null once removed (unlinked)
  int64_t mtime = 0;                       // unix seconds
};

struct DirEntry {
  std::string name;
  fuse_ino_t ino = 0;
  NodeKind kind = NodeKind::kDirectory;
};

class InodeTable {
 public:
  // The root directory gets FUSE_ROOT_ID and `root_mtime`.
  explicit InodeTable(int64_t root_mtime);

  // Adds a member at `path` ("a/b.npy"): an archived one (`member_index`) at start, or a
  // growing one resumed from the spool (`growing`). Missing parent directories are created
  // (their mtime is the newest member's). EEXIST if the path (or a parent) is already taken;
  // the caller logs and skips it.
  Status AddMember(const std::string& path, NodeKind kind, size_t member_index,
                   std::shared_ptr<GrowingMember> growing, int64_t mtime);

  // Adds `name` under directory `parent` (kDirectory or kGrowing with `growing` set).
  // ENOENT parent unknown or removed, ENOTDIR parent is a file, EEXIST name taken.
  Result<NodeInfo> AddChild(fuse_ino_t parent, const std::string& name, NodeKind kind,
                            std::shared_ptr<GrowingMember> growing, int64_t mtime);

  // The path a new child `name` of `parent` would have. ENOENT/ENOTDIR as AddChild.
  Result<std::string> ChildPath(fuse_ino_t parent, const std::string& name) const;

  // Finds `name` in `parent`; when found and `count` is set, increments its nlookup.
  std::optional<NodeInfo> Lookup(fuse_ino_t parent, const std::string& name, bool count);
  std::optional<NodeInfo> Get(fuse_ino_t ino) const;
  // Sets the mtime of a node (a growing member after a write).
  void Touch(fuse_ino_t ino, int64_t mtime);
  // Drops `n` lookup references. EINVAL (for the log) if the kernel forgets more than it
  // looked up, which would mean a lookup was not counted; the count stops at 0.
  Status Forget(fuse_ino_t ino, uint64_t n);

  // The entries of a directory, in inode order (the order they were added). ENOTDIR/ENOENT.
  Result<std::vector<DirEntry>> List(fuse_ino_t dir) const;
  // Parent inode of a node (the root is its own parent).
  fuse_ino_t ParentOf(fuse_ino_t ino) const;

  // Detaches `name` from `parent` (unlink/rmdir). ENOENT if absent, ENOTEMPTY for a directory
  // with entries. The node stays valid for inodes the kernel still holds.
  Status Detach(fuse_ino_t parent, const std::string& name);
  // Moves `name` to `new_parent`/`new_name` (growing members and empty dirs only; the
  // caller checks the core rules first). EEXIST if the target exists.
  Status Move(fuse_ino_t parent, const std::string& name, fuse_ino_t new_parent,
              const std::string& new_name);

  size_t size() const;  // nodes ever created, for statfs

 private:
  struct Node {
    fuse_ino_t ino = 0;
    NodeKind kind = NodeKind::kDirectory;
    fuse_ino_t parent = 0;
    std::string path;
    size_t member_index = 0;
    std::shared_ptr<GrowingMember> growing;
    int64_t mtime = 0;
    uint64_t nlookup = 0;
    bool detached = false;
    std::map<std::string, fuse_ino_t> children;  // directories only
  };

  Node* NodeLocked(fuse_ino_t ino) const;
  Node* NewNodeLocked(NodeKind kind, fuse_ino_t parent, std::string path);
  static NodeInfo InfoOf(const Node& n);
  static std::string JoinPath(const std::string& dir, const std::string& name);

  mutable std::shared_mutex mu_;              // guards everything below and every Node
  std::vector<std::unique_ptr<Node>> nodes_;  // index = ino - 1; entries never removed
};

}  // namespace npzfs::fs
