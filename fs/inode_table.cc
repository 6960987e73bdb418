#include "fs/inode_table.h"

#include <algorithm>
#include <cerrno>
#include <mutex>

namespace npzfs::fs {

InodeTable::InodeTable(int64_t root_mtime) {
  Node* root = NewNodeLocked(NodeKind::kDirectory, FUSE_ROOT_ID, "");
  root->mtime = root_mtime;
  root->nlookup = 1;  // the kernel holds the root without a lookup
}

InodeTable::Node* InodeTable::NodeLocked(fuse_ino_t ino) const {
  if (ino == 0 || ino > nodes_.size()) return nullptr;
  return nodes_[ino - 1].get();
}

InodeTable::Node* InodeTable::NewNodeLocked(NodeKind kind, fuse_ino_t parent, std::string path) {
  auto node = std::make_unique<Node>();
  node->ino = nodes_.size() + 1;
  node->kind = kind;
  node->parent = parent;
  node->path = std::move(path);
  nodes_.push_back(std::move(node));
  return nodes_.back().get();
}

NodeInfo InodeTable::InfoOf(const Node& n) {
  return NodeInfo{n.ino, n.kind, n.path, n.member_index, n.growing, n.mtime};
}

std::string InodeTable::JoinPath(const std::string& dir, const std::string& name) {
  return dir.empty() ? name : dir + "/" + name;
}

Status InodeTable::AddMember(const std::string& path, NodeKind kind, size_t member_index,
                             std::shared_ptr<GrowingMember> growing, int64_t mtime) {
  std::unique_lock lock(mu_);
  Node* dir = NodeLocked(FUSE_ROOT_ID);
  size_t start = 0;
  while (true) {
    size_t slash = path.find('/', start);
    std::string name = path.substr(start, slash == std::string::npos ? slash : slash - start);
    if (name.empty()) return Status::Error(EINVAL, path + ": empty path component");
    std::string child_path = path.substr(0, slash);
    auto it = dir->children.find(name);
    if (slash == std::string::npos) {
      if (it != dir->children.end()) {
        return Status::Error(EEXIST, path + ": name already used");
      }
      Node* file = NewNodeLocked(kind, dir->ino, child_path);
      file->member_index = member_index;
      file->growing = std::move(growing);
      file->mtime = mtime;
      dir->children.emplace(name, file->ino);
      if (mtime > dir->mtime) dir->mtime = mtime;
      return Status::Ok();
    }
    Node* next;
    if (it == dir->children.end()) {
      next = NewNodeLocked(NodeKind::kDirectory, dir->ino, child_path);
      dir->children.emplace(name, next->ino);
    } else {
      next = NodeLocked(it->second);
      if (next->kind != NodeKind::kDirectory) {
        return Status::Error(EEXIST, path + ": '" + child_path + "' is already a file");
      }
    }
    if (mtime > dir->mtime) dir->mtime = mtime;
    dir = next;
    start = slash + 1;
  }
}

Result<std::string> InodeTable::ChildPath(fuse_ino_t parent, const std::string& name) const {
  std::shared_lock lock(mu_);
  Node* dir = NodeLocked(parent);
  if (dir == nullptr || dir->detached) return Status::Error(ENOENT, "no such directory");
  if (dir->kind != NodeKind::kDirectory) return Status::Error(ENOTDIR, dir->path);
  return JoinPath(dir->path, name);
}

Result<NodeInfo> InodeTable::AddChild(fuse_ino_t parent, const std::string& name, NodeKind kind,
                                      std::shared_ptr<GrowingMember> growing, int64_t mtime) {
  std::unique_lock lock(mu_);
  Node* dir = NodeLocked(parent);
  if (dir == nullptr || dir->detached) return Status::Error(ENOENT, "no such directory");
  if (dir->kind != NodeKind::kDirectory) return Status::Error(ENOTDIR, dir->path);
  if (dir->children.contains(name)) {
    return Status::Error(EEXIST, JoinPath(dir->path, name) + ": exists");
  }
  Node* node = NewNodeLocked(kind, parent, JoinPath(dir->path, name));
  node->growing = std::move(growing);
  node->mtime = mtime;
  node->nlookup = 1;  // the reply to create/mknod/mkdir is a lookup
  dir->children.emplace(name, node->ino);
  dir->mtime = mtime;
  return InfoOf(*node);
}

std::optional<NodeInfo> InodeTable::Lookup(fuse_ino_t parent, const std::string& name, bool count) {
  // Counting changes a node, so take the lock exclusively; lookups are short.
  std::unique_lock lock(mu_);
  Node* dir = NodeLocked(parent);
  if (dir == nullptr || dir->kind != NodeKind::kDirectory) return std::nullopt;
  auto it = dir->children.find(name);
  if (it == dir->children.end()) return std::nullopt;
  Node* node = NodeLocked(it->second);
  if (count) ++node->nlookup;
  return InfoOf(*node);
}

std::optional<NodeInfo> InodeTable::Get(fuse_ino_t ino) const {
  std::shared_lock lock(mu_);
  Node* node = NodeLocked(ino);
  if (node == nullptr) return std::nullopt;
  return InfoOf(*node);
}

void InodeTable::Touch(fuse_ino_t ino, int64_t mtime) {
  std::unique_lock lock(mu_);
  if (Node* node = NodeLocked(ino)) node->mtime = mtime;
}

Status InodeTable::Forget(fuse_ino_t ino, uint64_t n) {
  std::unique_lock lock(mu_);
  Node* node = NodeLocked(ino);
  if (node == nullptr) return Status::Error(EINVAL, "inode " + std::to_string(ino) + " is unknown");
  if (n > node->nlookup) {
    const uint64_t had = node->nlookup;
    node->nlookup = 0;
    return Status::Error(EINVAL, "nlookup underflow on inode " + std::to_string(ino) + " (" +
                                     (node->path.empty() ? "/" : node->path) + "): forgets " +
                                     std::to_string(n) + " of " + std::to_string(had));
  }
  node->nlookup -= n;
  return Status::Ok();
}

Result<std::vector<DirEntry>> InodeTable::List(fuse_ino_t dir_ino) const {
  std::shared_lock lock(mu_);
  Node* dir = NodeLocked(dir_ino);
  if (dir == nullptr) return Status::Error(ENOENT, "no such directory");
  if (dir->kind != NodeKind::kDirectory) return Status::Error(ENOTDIR, dir->path);
  std::vector<DirEntry> entries;
  entries.reserve(dir->children.size());
  for (const auto& [name, ino] : dir->children) {
    entries.push_back(DirEntry{name, ino, NodeLocked(ino)->kind});
  }
  std::sort(entries.begin(), entries.end(),
            [](const DirEntry& a, const DirEntry& b) { return a.ino < b.ino; });
  return entries;
}

fuse_ino_t InodeTable::ParentOf(fuse_ino_t ino) const {
  std::shared_lock lock(mu_);
  Node* node = NodeLocked(ino);
  return node == nullptr ? FUSE_ROOT_ID : node->parent;
}

Status InodeTable::Detach(fuse_ino_t parent, const std::string& name) {
  std::unique_lock lock(mu_);
  Node* dir = NodeLocked(parent);
  if (dir == nullptr || dir->kind != NodeKind::kDirectory) return Status::Error(ENOENT, name);
  auto it = dir->children.find(name);
  if (it == dir->children.end()) return Status::Error(ENOENT, name);
  Node* node = NodeLocked(it->second);
  if (node->kind == NodeKind::kDirectory && !node->children.empty()) {
    return Status::Error(ENOTEMPTY, node->path + ": directory not empty");
  }
  node->detached = true;
  // The spool dropped a removed member: drop it here too, so that its file (and fd) goes
  // once the last open handle does. The node stays for inodes the kernel remembers.
  node->growing.reset();
  dir->children.erase(it);
  return Status::Ok();
}

Status InodeTable::Move(fuse_ino_t parent, const std::string& name, fuse_ino_t new_parent,
                        const std::string& new_name) {
  std::unique_lock lock(mu_);
  Node* from = NodeLocked(parent);
  Node* to = NodeLocked(new_parent);
  if (from == nullptr || to == nullptr || from->kind != NodeKind::kDirectory ||
      to->kind != NodeKind::kDirectory || to->detached) {
    return Status::Error(ENOENT, name);
  }
  auto it = from->children.find(name);
  if (it == from->children.end()) return Status::Error(ENOENT, name);
  if (to->children.contains(new_name)) {
    return Status::Error(EEXIST, JoinPath(to->path, new_name) + ": exists");
  }
  Node* node = NodeLocked(it->second);
  if (node->kind == NodeKind::kDirectory && !node->children.empty()) {
    return Status::Error(EPERM, node->path + ": cannot move a directory with entries");
  }
  from->children.erase(it);
  to->children.emplace(new_name, node->ino);
  node->parent = new_parent;
  node->path = JoinPath(to->path, new_name);
  return Status::Ok();
}

size_t InodeTable::size() const {
  std::shared_lock lock(mu_);
  return nodes_.size();
}

}  // namespace npzfs::fs
