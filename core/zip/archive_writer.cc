// Atomic append to a ZIP archive.
//
// The problem. Adding members to a ZIP means writing new local headers and data where the
// central directory now is, then a new central directory and end records. Done in place,
// a crash or ENOSPC halfway leaves an archive whose end record is gone: every reader
// would call the whole file "not a zip archive", old members included. The product
// promises the archive is either as before or complete.
//
// The design. Build the new archive next to the old one, then rename it over:
//   1. Open the old archive and read its directory (ReadZipDirectory). A file that is not
//      a zip is rejected (EINVAL) before anything is written; an empty file counts as an
//      archive without members.
//   2. Create ".<name>.npzfs-tmp-XXXXXX" in the same directory (same filesystem, so the
//      rename is atomic; dot-prefixed and recognisable so a leftover after a power cut is
//      obviously ours). O_EXCL with mode 0666 lets the umask apply for a new archive; an
//      existing archive's mode (and, when permitted, owner) is copied.
//   3. Copy the old prefix [0, cd_offset) verbatim with copy_file_range. On XFS and btrfs
//      this shares extents (no data is copied, and no extra space is used); elsewhere the
//      kernel copies without a round trip through user space; if the kernel refuses, a
//      pread/pwrite loop does it. Old local headers and data keep their offsets, so...
//   4. ...the old central records stay valid byte for byte: they are written verbatim
//      after the new members, followed by the new records and fresh end records (ZIP64
//      when the count, a size or an offset needs it) carrying the old comment.
//   5. fsync the temp file, check the old archive was not replaced or modified meanwhile,
//      rename over it, fsync the directory.
// Any failure unlinks the temp file (AtomicFile, core/base/atomic_file.h), so the old
// archive is untouched and nothing is left behind.
//
// Alternatives rejected.
//   - In-place append (write over the old central directory, then write the new one).
//     Cheapest in I/O, but not atomic: a failure mid-way destroys the index of the old
//     members. Keeping a copy of the old directory to "roll back" still loses on a crash.
//   - Writing a data descriptor per member so one pass suffices on a pipe: the target is a
//     seekable temp file, so headers are patched in place instead (see zip_writer.cc).
//   - Rewriting old members through libzip: it re-encodes headers (old members would not
//     stay byte-identical) and buffers more than we want.
// The cost is a full copy of the old archive on filesystems without reflink; the cost is
// accepted because it buys atomicity, and XFS/btrfs make it nearly free.
#include "npzfs/archive_writer.h"

#include <fcntl.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <memory>
#include <set>

#include "core/base/atomic_file.h"
#include "core/base/thread_pool.h"
#include "core/zip/zip_writer.h"
#include "npzfs/file_util.h"
#include "npzfs/zip_directory.h"

namespace npzfs {
namespace {

constexpr size_t kCopyBuffer = size_t{1} << 20;

// Copies [0, length) of `src` to the same offsets of `dst`.
Status CopyPrefix(int src, const std::string& src_path, int dst, const std::string& dst_path,
                  uint64_t length, const std::function<void(uint64_t)>& on_bytes) {
  uint64_t done = 0;
  while (done < length) {
    loff_t in = static_cast<loff_t>(done), out = static_cast<loff_t>(done);
    // 64 MiB per call keeps progress reports and cancellation latency reasonable.
    const size_t want = static_cast<size_t>(std::min<uint64_t>(length - done, 64u << 20));
    ssize_t r = ::copy_file_range(src, &in, dst, &out, want, 0);
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == EXDEV || errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP) break;
      return ErrnoStatus(errno, dst_path, "copying the members of " + src_path + " failed");
    }
    if (r == 0) {
      return Status::Error(EIO, src_path + ": file shrank while it was being copied (at " +
                                    std::to_string(done) + " of " + std::to_string(length) +
                                    " bytes)");
    }
    done += static_cast<uint64_t>(r);
    on_bytes(static_cast<uint64_t>(r));
  }
  std::string buf;
  while (done < length) {
    if (buf.empty()) buf.resize(kCopyBuffer);
    const size_t want = static_cast<size_t>(std::min<uint64_t>(length - done, buf.size()));
    NPZ_RETURN_IF_ERROR(PreadExact(src, buf.data(), want, done, src_path));
    NPZ_RETURN_IF_ERROR(PwriteAll(dst, buf.data(), want, done, dst_path));
    done += want;
    on_bytes(want);
  }
  return Status::Ok();
}

uint64_t MemberSize(const NewMember& m) {
  uint64_t n = 0;
  for (const MemberPiece& p : m.pieces) n += p.fd >= 0 ? p.length : p.bytes.size();
  return n;
}

bool SameFile(const struct stat& a, const struct stat& b) {
  return a.st_dev == b.st_dev && a.st_ino == b.st_ino && a.st_size == b.st_size &&
         a.st_mtim.tv_sec == b.st_mtim.tv_sec && a.st_mtim.tv_nsec == b.st_mtim.tv_nsec;
}

// The one implementation behind AppendToArchive (keep_existing) and WriteArchive.
Status Build(const std::string& requested_path, const std::vector<NewMember>& members,
             const WriteOptions& options, bool keep_existing) {
  if (options.compress_level < -1 || options.compress_level > 9) {
    return Status::Error(EINVAL, requested_path + ": compression level " +
                                     std::to_string(options.compress_level) +
                                     " is not -1 (stored) or 0..9");
  }
  // Follow a symlink so the rename replaces its target, not the link.
  std::string path = requested_path;
  struct stat lst;
  if (::lstat(path.c_str(), &lst) == 0 && S_ISLNK(lst.st_mode)) {
    char resolved[PATH_MAX];
    if (::realpath(path.c_str(), resolved) != nullptr) path = resolved;
  }

  std::set<std::string> new_names;
  for (const NewMember& m : members) {
    if (m.name.empty() || m.name.size() > 0xFFFF) {
      return Status::Error(EINVAL, path + ": invalid member name \"" + m.name + "\"");
    }
    if (!new_names.insert(m.name).second && options.reject_existing_names) {
      return Status::Error(EINVAL, path + ": member " + m.name + " is given twice");
    }
  }

  // The old archive, if any.
  UniqueFd old_fd;
  struct stat old_st {};
  ZipDirectory old;
  if (keep_existing) {
    auto opened = OpenFile(path, O_RDONLY);
    if (opened.ok()) {
      old_fd = std::move(opened).value();
      if (::fstat(old_fd.get(), &old_st) != 0) return ErrnoStatus(errno, path, "cannot stat");
      if (!S_ISREG(old_st.st_mode)) {
        return Status::Error(EINVAL, path + ": not a regular file");
      }
      // An empty file (from touch or mktemp) holds no members: treat it as a new archive.
      if (old_st.st_size > 0) {
        NPZ_ASSIGN_OR_RETURN(old, ReadZipDirectory(old_fd.get(), path));
      }
      if (options.reject_existing_names) {
        for (const ZipEntry& e : old.entries) {
          if (new_names.count(e.name)) {
            return Status::Error(EEXIST, path + ": member " + e.name + " already exists");
          }
        }
      }
      if (members.empty()) return Status::Ok();  // nothing to add: leave the file alone
    } else if (opened.status().code() != ENOENT) {
      return opened.status();
    }
  }

  // Keeps an existing archive's mode (and owner, where permitted).
  NPZ_ASSIGN_OR_RETURN(AtomicFile tmp, AtomicFile::Create(path));
  const int tmp_fd = tmp.fd();
  const std::string& tmp_path = tmp.temp_path();

  uint64_t total = old.cd_offset;  // 0 without an old archive
  for (const NewMember& m : members) total += MemberSize(m);
  uint64_t done = 0;
  auto on_bytes = [&](uint64_t n) {
    done += n;
    if (options.progress) options.progress(done, total);
  };
  if (options.progress) options.progress(0, total);

  auto with_context = [&](const Status& s) {
    // Every message leads with the archive (a temp file or source path follows it).
    return s.message().rfind(path + ":", 0) == 0 ? s : s.WithContext(path);
  };

  uint64_t start = 0;
  if (old.cd_offset > 0) {
    Status s = CopyPrefix(old_fd.get(), path, tmp_fd, tmp_path, old.cd_offset, on_bytes);
    if (!s.ok()) return with_context(s);
    start = old.cd_offset;
  }

  std::unique_ptr<ThreadPool> pool;
  if (options.compress_level >= 0) pool = std::make_unique<ThreadPool>(options.threads);
  ZipWriter writer(tmp_fd, tmp_path, start);
  writer.set_progress(on_bytes);
  writer.set_thread_pool(pool.get());
  for (const NewMember& m : members) {
    ZipMemberOptions mo;
    mo.compress_level = options.compress_level;
    mo.crc32 = m.crc32;
    mo.size_hint = MemberSize(m);
    mo.chunk_size = options.chunk_size;
    mo.leading_chunk = m.leading_chunk;
    Status s = writer.BeginMember(m.name, mo);
    for (size_t i = 0; s.ok() && i < m.pieces.size(); ++i) {
      const MemberPiece& p = m.pieces[i];
      if (p.fd >= 0) {
        s = writer.CopyFrom(p.fd, p.offset, p.length,
                            "member " + m.name + ": source " +
                                (p.source.empty() ? "fd " + std::to_string(p.fd) : p.source));
      } else {
        s = writer.Write(p.bytes.data(), p.bytes.size());
      }
    }
    if (s.ok()) s = writer.EndMember();
    if (!s.ok()) return with_context(s);
  }
  Status s = writer.Finish(old.cd_bytes, old.entries.size(), old.comment);
  if (!s.ok()) return with_context(s);
  return tmp.Commit([&]() -> Status {
    if (!old_fd.valid()) return Status::Ok();
    struct stat now;
    if (::stat(path.c_str(), &now) != 0 || !SameFile(now, old_st)) {
      return Status::Error(EBUSY, path +
                                      ": the archive was changed or replaced while members "
                                      "were being added; nothing was written");
    }
    return Status::Ok();
  });
}

}  // namespace

Status AppendToArchive(const std::string& archive_path, const std::vector<NewMember>& members,
                       const WriteOptions& options) {
  return Build(archive_path, members, options, /*keep_existing=*/true);
}

Status WriteArchive(const std::string& out_path, const std::vector<NewMember>& members,
                    const WriteOptions& options) {
  return Build(out_path, members, options, /*keep_existing=*/false);
}

}  // namespace npzfs
