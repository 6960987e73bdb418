#include "core/base/mount_table.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <sstream>

#include "npzfs/file_util.h"

namespace npzfs {
namespace {

constexpr const char* kMountInfoPath = "/proc/self/mountinfo";
constexpr size_t kReadChunk = 64 * 1024;

// The kernel writes ' ', '\t', '\n' and '\\' in paths as octal escapes ("\040").
std::string Unescape(std::string_view field) {
  std::string out;
  for (size_t i = 0; i < field.size(); ++i) {
    if (field[i] == '\\' && i + 3 < field.size() && field[i + 1] >= '0' && field[i + 1] <= '3' &&
        field[i + 2] >= '0' && field[i + 2] <= '7' && field[i + 3] >= '0' && field[i + 3] <= '7') {
      out += static_cast<char>((field[i + 1] - '0') * 64 + (field[i + 2] - '0') * 8 +
                               (field[i + 3] - '0'));
      i += 3;
    } else {
      out += field[i];
    }
  }
  return out;
}

// "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue"
std::optional<MountEntry> ParseLine(const std::string& line) {
  std::istringstream in(line);
  std::vector<std::string> fields;
  for (std::string f; in >> f;) fields.push_back(f);
  // id, parent, major:minor, root, mount point, options, optional fields..., "-", type,
  // source, super options.
  size_t dash = 6;
  while (dash < fields.size() && fields[dash] != "-") ++dash;
  if (fields.size() < 6 || dash + 2 >= fields.size()) return std::nullopt;
  MountEntry e;
  e.id = fields[0];
  e.parent_id = fields[1];
  e.propagation.assign(fields.begin() + 6, fields.begin() + static_cast<long>(dash));
  e.device = fields[2];
  e.root = Unescape(fields[3]);
  e.mount_point = Unescape(fields[4]);
  e.mount_options = fields[5];
  e.fstype = Unescape(fields[dash + 1]);
  e.source = Unescape(fields[dash + 2]);
  if (dash + 3 < fields.size()) e.super_options = fields[dash + 3];
  return e;
}

}  // namespace

std::optional<uint32_t> MountEntry::fuse_owner() const {
  std::istringstream in(super_options);
  for (std::string option; std::getline(in, option, ',');) {
    if (!option.starts_with("user_id=")) continue;
    const std::string digits = option.substr(8);
    if (digits.empty() || digits.size() > 10 ||
        digits.find_first_not_of("0123456789") != std::string::npos) {
      return std::nullopt;
    }
    const uint64_t uid = std::stoull(digits);
    if (uid > UINT32_MAX) return std::nullopt;
    return static_cast<uint32_t>(uid);
  }
  return std::nullopt;
}

bool MountEntry::read_only() const {
  std::istringstream in(mount_options);
  for (std::string option; std::getline(in, option, ',');) {
    if (option == "ro") return true;
  }
  return false;
}

std::vector<MountEntry> ParseMountInfo(std::string_view text) {
  std::vector<MountEntry> table;
  std::istringstream in{std::string(text)};
  for (std::string line; std::getline(in, line);) {
    if (auto e = ParseLine(line)) table.push_back(std::move(*e));
  }
  return table;
}

Result<std::vector<MountEntry>> ReadMountTable() {
  NPZ_ASSIGN_OR_RETURN(UniqueFd fd, OpenFile(kMountInfoPath, O_RDONLY));
  std::string text;
  std::string chunk(kReadChunk, '\0');
  while (true) {
    // /proc files have no size and no offsets: read(2) until the end.
    const ssize_t n = ::read(fd.get(), chunk.data(), chunk.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoStatus(errno, kMountInfoPath, "read failed");
    if (n == 0) break;
    text.append(chunk.data(), static_cast<size_t>(n));
  }
  return ParseMountInfo(text);
}

std::optional<MountEntry> FindMount(const std::vector<MountEntry>& table,
                                    const std::string& mount_point) {
  std::optional<MountEntry> found;
  for (const MountEntry& e : table) {
    if (e.mount_point == mount_point) found = e;
  }
  return found;
}

namespace {

const MountEntry* ParentOf(const MountEntry& e, const std::vector<MountEntry>& table) {
  for (const MountEntry& p : table) {
    if (p.id == e.parent_id && p.id != e.id) return &p;
  }
  return nullptr;
}

// Where `e` sits in the filesystem of its parent `p`: p's root joined with e's mount point
// below p's. nullopt if e's mount point is not below p's.
std::optional<std::string> PlaceInParent(const MountEntry& e, const MountEntry& p) {
  const std::optional<std::string> below = PathBelow(e.mount_point, p.mount_point);
  if (!below || below->empty()) return std::nullopt;
  return (p.root == "/" ? "" : p.root) + *below;
}

}  // namespace

bool IsPropagatedCopy(const MountEntry& copy, const MountEntry& mount,
                      const std::vector<MountEntry>& table) {
  if (copy.id == mount.id || copy.device != mount.device || copy.root != mount.root) {
    return false;
  }
  const MountEntry* from = ParentOf(mount, table);
  const MountEntry* to = ParentOf(copy, table);
  if (from == nullptr || to == nullptr || from->device != to->device) return false;
  bool related = false;
  for (const std::string& group : from->propagation) {
    if (!group.starts_with("shared:")) continue;
    const std::string slave = "master:" + group.substr(7);
    for (const std::string& p : to->propagation) related |= p == group || p == slave;
  }
  const auto a = PlaceInParent(mount, *from);
  const auto b = PlaceInParent(copy, *to);
  return related && a.has_value() && a == b;
}

}  // namespace npzfs
