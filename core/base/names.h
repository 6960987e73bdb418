// Names that the daemon, the npz tool and core must agree on: the extended attributes of the
// mount and of new members, and the hidden side files an archive gets ("<dir>/.<base>.npzfs-*").
// One home each, so that `npz umount`, `npz recover` and the daemon can never disagree.
//
// Constants and pure functions over strings: thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "npzfs/file_util.h"

namespace npzfs {

// ---- extended attributes ----
// The frame layout of a .npy member: settable on a new member before its first write,
// read-only on an archived one.
inline constexpr std::string_view kDescrAttribute = "user.npy.descr";            // "<i2"
inline constexpr std::string_view kShapeAttribute = "user.npy.shape";            // "256,1024"
inline constexpr std::string_view kFortranAttribute = "user.npy.fortran_order";  // "0" or "1"
// Read-only attributes of the mount root: the `npz umount` protocol (the daemon's pid, the
// absolute path of the file it writes its finalize outcome to).
inline constexpr std::string_view kPidAttribute = "user.npzfs.pid";
inline constexpr std::string_view kResultAttribute =
    "user.npzfs.result";  // "": nothing to finalize
// The file in which the daemon publishes finalize progress ("DONE TOTAL" in bytes) after the
// unmount, for `npz umount` ("" when there is none).
inline constexpr std::string_view kProgressAttribute = "user.npzfs.progress";
// Counters of the mount as one JSON object (requests, bytes served, cache hits, ...).
inline constexpr std::string_view kStatsAttribute = "user.npzfs.stats";

// FNV-1a (64 bits) of `s` as 16 lowercase hex digits: a short, stable name for a longer one
// (an archive's absolute path, a member name too long for a file name). No security
// depends on it. Spool file names are made of it: it must never change.
inline std::string NameHash(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (char c : s) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001b3ull;
  }
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out(16, '0');
  for (size_t i = out.size(); i-- > 0; h >>= 4) out[i] = kDigits[h & 0xf];
  return out;
}

// ---- side files ----
// "<dir>/<base>" -> ".<base><suffix>": the hidden name of a side file of an archive.
inline std::string SideFileName(const std::string& archive_path, std::string_view suffix) {
  return "." + BaseName(archive_path) + std::string(suffix);
}
// The saved random-access index next to the archive: ".<base>.npzfs-index".
inline std::string IndexFileName(const std::string& archive_path) {
  return SideFileName(archive_path, ".npzfs-index");
}
// The index in a directory that holds the indexes of many archives (-o index=DIR, the
// runtime directory): ".<base>-<NameHash of its absolute path>.npzfs-index", so that archives
// of one name in different directories never share one.
inline std::string SharedIndexFileName(const std::string& absolute_archive_path) {
  return SideFileName(absolute_archive_path,
                      "-" + NameHash(absolute_archive_path) + ".npzfs-index");
}
// The spool of new members: "<dir>/.<base>.npzfs-spool" next to the archive, by default.
inline std::string DefaultSpoolDir(const std::string& archive_path) {
  return DirName(archive_path) + "/" + SideFileName(archive_path, ".npzfs-spool");
}
// The lock file inside a spool directory (a name no member's spool file can have).
inline constexpr std::string_view kSpoolLockFileName = ".npzfs-lock";
// The file holding the outcome of a daemon's finalize, for `npz umount`.
inline std::string ResultFileName(const std::string& archive_path) {
  return SideFileName(archive_path, ".npzfs-result");
}

}  // namespace npzfs
