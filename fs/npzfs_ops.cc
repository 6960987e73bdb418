// The FUSE handlers. Shape of every handler (libfuse passthrough_hp / hello_ll style):
// look the inode up in the table (a copy, no lock held afterwards), call core, reply once.
// Every error reply goes through ReplyStatus: a positive errno, and the core Status message
// logged once here, at the FUSE boundary, unless the errno is an ordinary answer
// (kExpectedErrnos: ENOENT on lookup, ENODATA on getxattr, EEXIST, EBUSY, ...).
//
// Every open file is one MemberReader (core): a stored, deflated or growing member answers
// a read with bytes, with "splice from this fd at this offset" or with pieces of memory it
// holds (decoded spans in the cache, sent with one writev), so Read is: clamp, then
// reply with the answer. No handler knows which kind of member it reads.
//
// Caching policy:
// - Archived members never change: keep_cache and long entry/attr timeouts, and the page
//   cache is used (no direct_io) so that numpy can mmap them (direct_io handles refuse a
//   shared mmap with ENODEV).
// - Growing members change under readers: attr/entry timeout 0 so stat follows the growth,
//   reader opens without keep_cache (each open() drops stale pages and sees new frames),
//   and writer handles use direct_io: without it the kernel keeps written bytes in the page
//   cache at the writer's offsets, which are not the visible offsets of those bytes.
#include "fs/npzfs_ops.h"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/uio.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdio>  // RENAME_NOREPLACE
#include <cstring>
#include <ctime>
#include <mutex>
#include <span>
#include <utility>
#include <vector>

#include "core/base/names.h"
#include "core/base/text_codec.h"
#include "core/npy/frame_layout.h"
#include "fs/log.h"
#include "npzfs/npy_header.h"

namespace npzfs::fs {
namespace {

constexpr double kImmutableTimeout = 86400.0;  // one day: archived members never change

// Errnos that are ordinary answers to what a program asked, not incidents: replied without
// a log line. Everything else is logged with its core message.
constexpr int kExpectedErrnos[] = {ENOENT, EEXIST,  ENODATA,   EBUSY, EROFS,
                                   EISDIR, ENOTDIR, ENOTEMPTY, ERANGE};

// Every handler starts here: the request is counted for user.npzfs.stats.
Mount& MountOf(fuse_req_t req) {
  Mount& m = *static_cast<Mount*>(fuse_req_userdata(req));
  m.stats.requests.fetch_add(1, std::memory_order_relaxed);
  return m;
}

FileHandle* HandleOf(const fuse_file_info* fi) {
  return reinterpret_cast<FileHandle*>(static_cast<uintptr_t>(fi->fh));
}

bool Writable(const Mount& m) { return m.writable(); }

bool Expected(int code, std::initializer_list<int> also_expected) {
  return std::find(std::begin(kExpectedErrnos), std::end(kExpectedErrnos), code) !=
             std::end(kExpectedErrnos) ||
         std::find(also_expected.begin(), also_expected.end(), code) != also_expected.end();
}

// The one error reply: `status`'s errno (0 for ok), and its message logged once unless the
// errno is an expected answer (kExpectedErrnos, or `also_expected` for this request; -v logs
// those too).
void ReplyStatus(fuse_req_t req, const char* op, const Status& status,
                 std::initializer_list<int> also_expected = {}) {
  if (!status.ok()) {
    const std::string line = std::string(op) + ": " + status.message();
    if (!Expected(status.code(), also_expected)) {
      LogError(line);
    } else {
      LogDebug(line);
    }
  }
  fuse_reply_err(req, status.code());
}

Status NoSuchInode(fuse_ino_t ino) {
  return Status::Error(ENOENT, "inode " + std::to_string(ino) + " is unknown");
}

Status ReadOnlyMount(const std::string& what) {
  return Status::Error(EROFS, what + ": read-only mount");
}

struct stat StatOf(const Mount& m, const NodeInfo& node) {
  struct stat st {};
  st.st_ino = node.ino;
  st.st_uid = m.uid;
  st.st_gid = m.gid;
  st.st_blksize = kMaxRequestBytes;
  st.st_mtim.tv_sec = node.mtime;
  st.st_ctim.tv_sec = node.mtime;
  st.st_atim.tv_sec = node.mtime;
  switch (node.kind) {
    case NodeKind::kDirectory:
      st.st_mode = S_IFDIR | (Writable(m) ? 0755 : 0555);
      st.st_nlink = 2;
      st.st_size = 4096;
      break;
    case NodeKind::kArchived: {
      // Never the archive's own mode bits: numpy stores 0600 without file-type bits, and
      // the kernel answers an st_mode without them with EIO.
      const ArchiveMember& member = m.archive->members()[node.member_index];
      st.st_mode = S_IFREG | 0444;
      st.st_nlink = 1;
      st.st_size = static_cast<off_t>(member.entry.uncompressed_size);
      st.st_blocks = static_cast<blkcnt_t>((member.entry.compressed_size + 511) / 512);
      break;
    }
    case NodeKind::kGrowing: {
      // A removed member (its node is kept for inodes the kernel remembers) held nothing.
      uint64_t size = node.growing != nullptr ? node.growing->visible_size() : 0;
      st.st_mode = S_IFREG | 0644;
      st.st_nlink = 1;
      st.st_size = static_cast<off_t>(size);
      st.st_blocks = static_cast<blkcnt_t>((size + 511) / 512);
      break;
    }
  }
  return st;
}

double TimeoutOf(const Mount& m, const NodeInfo& node) {
  switch (node.kind) {
    case NodeKind::kArchived:
      return kImmutableTimeout;
    case NodeKind::kDirectory:
      return Writable(m) ? 1.0 : kImmutableTimeout;
    case NodeKind::kGrowing:
      return 0.0;  // sizes follow the growth
  }
  return 0.0;
}

fuse_entry_param EntryOf(const Mount& m, const NodeInfo& node) {
  fuse_entry_param e{};
  e.ino = node.ino;
  e.generation = 1;
  e.attr = StatOf(m, node);
  e.attr_timeout = TimeoutOf(m, node);
  e.entry_timeout = TimeoutOf(m, node);
  return e;
}

int64_t Now() { return static_cast<int64_t>(time(nullptr)); }

// ---- init / destroy ----

void Init(void* userdata, fuse_conn_info* conn) {
  (void)userdata;
  conn->max_read = kMaxRequestBytes;  // must equal -o max_read (main passes it)
  conn->max_write = kMaxRequestBytes;
  conn->max_readahead = std::max(conn->max_readahead, kMaxRequestBytes);
  // Splice answers (stored members, growing members' data) go from the file into /dev/fuse.
  if (conn->capable & FUSE_CAP_SPLICE_WRITE) conn->want |= FUSE_CAP_SPLICE_WRITE;
  if (conn->capable & FUSE_CAP_SPLICE_MOVE) conn->want |= FUSE_CAP_SPLICE_MOVE;
  // The kernel must never cache writes and flush them later at the writer's offsets.
  conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
}

void Destroy(void* userdata) {
  auto* m = static_cast<Mount*>(userdata);
  if (m->archive != nullptr) {
    // First passes that ran behind readers (on idle cores only) are completed now when at
    // most 1 GiB is left to index (a few seconds), so a member read nearly through is fully
    // indexed for the next mount; the rest keep the part already indexed.
    constexpr uint64_t kUnmountIndexBudget = uint64_t{1} << 30;
    Status finished = m->archive->FinishStartedIndexes(kUnmountIndexBudget);
    if (!finished.ok()) LogWarning("cannot complete the index: " + finished.message());
    Status s = m->archive->SaveIndex();
    if (!s.ok()) LogWarning("cannot save the index: " + s.message());
  }
}

// ---- names ----

void Lookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  Mount& m = MountOf(req);
  std::optional<NodeInfo> node = m.table->Lookup(parent, name, /*count=*/true);
  if (!node) {
    // A negative entry may be cached only while nothing can be created.
    fuse_entry_param e{};
    e.entry_timeout = Writable(m) ? 0.0 : kImmutableTimeout;
    fuse_reply_entry(req, &e);
    return;
  }
  fuse_entry_param e = EntryOf(m, *node);
  fuse_reply_entry(req, &e);
}

void ForgetOne(Mount& m, fuse_ino_t ino, uint64_t nlookup) {
  Status s = m.table->Forget(ino, nlookup);
  if (!s.ok()) LogWarning("forget: " + s.message());
}

void Forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
  ForgetOne(MountOf(req), ino, nlookup);
  fuse_reply_none(req);
}

void ForgetMulti(fuse_req_t req, size_t count, fuse_forget_data* forgets) {
  Mount& m = MountOf(req);
  for (size_t i = 0; i < count; ++i) ForgetOne(m, forgets[i].ino, forgets[i].nlookup);
  fuse_reply_none(req);
}

void GetAttr(fuse_req_t req, fuse_ino_t ino, fuse_file_info* /*fi*/) {
  Mount& m = MountOf(req);
  std::optional<NodeInfo> node = m.table->Get(ino);
  if (!node) {
    ReplyStatus(req, "getattr", NoSuchInode(ino));
    return;
  }
  struct stat st = StatOf(m, *node);
  fuse_reply_attr(req, &st, TimeoutOf(m, *node));
}

void SetAttr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set,
             fuse_file_info* /*fi*/) {
  Mount& m = MountOf(req);
  std::optional<NodeInfo> node = m.table->Get(ino);
  if (!node) {
    ReplyStatus(req, "setattr", NoSuchInode(ino));
    return;
  }
  if (!Writable(m)) {
    ReplyStatus(req, "setattr", ReadOnlyMount(node->path));
    return;
  }
  if (node->kind == NodeKind::kArchived) {
    ReplyStatus(req, "setattr",
                Status::Error(EPERM, node->path + ": archived members cannot be changed"));
    return;
  }
  if (node->kind == NodeKind::kDirectory && (to_set & FUSE_SET_ATTR_SIZE)) {
    ReplyStatus(req, "truncate", Status::Error(EISDIR, node->path + ": is a directory"));
    return;
  }
  if (to_set & FUSE_SET_ATTR_SIZE) {
    Status s = node->growing == nullptr
                   ? Status::Error(ENOENT, node->path + ": was removed")
                   : node->growing->Truncate(static_cast<uint64_t>(attr->st_size));
    if (!s.ok()) {
      ReplyStatus(req, "truncate", s);
      return;
    }
  }
  // Mode, owner and time changes of new members and of directories (cp -p, cp -a, tar -x,
  // touch) are accepted and ignored: the archive records a member's mode and time as npzfs
  // sets them, and a zip has no directory attributes to keep.
  struct stat st = StatOf(m, *node);
  fuse_reply_attr(req, &st, 0.0);
}

// Adds one entry to a readdir(plus) reply buffer. Returns false when it does not fit.
struct DirectoryReply {
  fuse_req_t req;
  Mount& m;
  fuse_ino_t dir;
  bool plus;
  std::vector<char> buf;
  size_t used = 0;

  bool Add(const char* name, fuse_ino_t child_ino, mode_t mode, off_t next, bool dot) {
    char* dest = buf.data() + used;
    const size_t room = buf.size() - used;
    if (!plus) {
      struct stat st {};
      st.st_ino = child_ino;
      st.st_mode = mode;
      if (fuse_add_direntry(req, nullptr, 0, name, nullptr, 0) > room) return false;
      used += fuse_add_direntry(req, dest, room, name, &st, next);
      return true;
    }
    if (fuse_add_direntry_plus(req, nullptr, 0, name, nullptr, 0) > room) return false;
    fuse_entry_param e{};
    if (dot) {
      e.attr.st_ino = child_ino;
      e.attr.st_mode = mode;
    } else {
      // Counted only now that the entry is known to fit: the kernel will FORGET it.
      std::optional<NodeInfo> node = m.table->Lookup(dir, name, /*count=*/true);
      if (!node) return true;  // removed since List: skip it
      e = EntryOf(m, *node);
    }
    used += fuse_add_direntry_plus(req, dest, room, name, &e, next);
    return true;
  }
};

// Lists a directory; with `plus` (READDIRPLUS) every entry carries its attributes, so
// `ls -l` on 10,000 members needs no LOOKUP per file. Each plus entry other than "." and
// ".." counts as a lookup.
void ListDirectory(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, bool plus) {
  Mount& m = MountOf(req);
  auto entries = m.table->List(ino);
  if (!entries.ok()) {
    ReplyStatus(req, "readdir", entries.status());
    return;
  }
  // Offsets: 1 = ".", 2 = "..", then an entry's inode + 2 (entries come in inode order).
  // Inodes are never reused, so a listing resumed after entries were added or removed
  // returns every unchanged entry exactly once, as POSIX asks (a position in a name-sorted
  // list would shift under the cursor).
  DirectoryReply reply{req, m, ino, plus, std::vector<char>(size)};
  bool room = true;
  if (off < 1) room = reply.Add(".", ino, S_IFDIR, 1, true);
  if (room && off < 2) room = reply.Add("..", m.table->ParentOf(ino), S_IFDIR, 2, true);
  auto it = entries->begin();
  if (off > 2) {
    it = std::partition_point(entries->begin(), entries->end(), [&](const DirEntry& e) {
      return static_cast<off_t>(e.ino) + 2 <= off;
    });
  }
  for (; room && it != entries->end(); ++it) {
    mode_t mode = it->kind == NodeKind::kDirectory ? S_IFDIR : S_IFREG;
    room = reply.Add(it->name.c_str(), it->ino, mode, static_cast<off_t>(it->ino) + 2, false);
  }
  fuse_reply_buf(req, reply.buf.data(), reply.used);
}

void ReadDir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* /*fi*/) {
  ListDirectory(req, ino, size, off, /*plus=*/false);
}

void ReadDirPlus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* /*fi*/) {
  ListDirectory(req, ino, size, off, /*plus=*/true);
}

// ---- open / read / write ----

Result<std::unique_ptr<FileHandle>> OpenArchived(Mount& m, const NodeInfo& node,
                                                 fuse_file_info* fi) {
  if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC)) {
    // A name in the archive cannot be written, as if create() found it.
    return Writable(m) ? Status::Error(EEXIST, node.path + ": archived members are read-only")
                       : ReadOnlyMount(node.path);
  }
  const ArchiveMember& member = m.archive->members()[node.member_index];
  if (member.open_errno != 0)
    return Status::Error(member.open_errno, node.path + ": " + member.open_error);
  NPZ_ASSIGN_OR_RETURN(std::shared_ptr<MemberReader> reader,
                       m.archive->OpenMember(node.member_index));
  // Immutable: the page cache stays valid between opens; except once the member is known
  // bad, when pages served before the verdict (verify=on serves ahead of it) are dropped
  // now, so this reader gets the EIO instead of cached wrong bytes.
  fi->keep_cache = reader->known_bad().ok() ? 1 : 0;
  auto handle = std::make_unique<FileHandle>();
  handle->reader = std::move(reader);
  handle->archived = true;
  return handle;
}

// A handle for a growing member; a writer begins its session here (EBUSY for a second
// writer).
Result<std::unique_ptr<FileHandle>> OpenGrowing(Mount& m, const NodeInfo& node,
                                                fuse_file_info* fi) {
  if (node.growing == nullptr) return Status::Error(ENOENT, node.path + ": was removed");
  auto handle = std::make_unique<FileHandle>();
  handle->growing = node.growing;
  if ((fi->flags & O_ACCMODE) != O_RDONLY) {
    // The release of the writer's previous handle may still be on its way (see BeginWrite).
    const std::chrono::milliseconds wait(m.single_threaded ? 0 : 1000);
    NPZ_RETURN_IF_ERROR(
        node.growing->BeginWrite(&handle->session, (fi->flags & O_APPEND) != 0, wait));
    handle->writer = true;
    handle->writers = &m.stats.writers;
    m.stats.writers.fetch_add(1);
    if (fi->flags & O_TRUNC) {
      NPZ_RETURN_IF_ERROR(node.growing->Truncate(0));  // the handle ends the session
    }
    fi->direct_io = 1;  // written bytes must never enter the page cache at writer offsets
  } else if (fi->flags & O_TRUNC) {
    NPZ_RETURN_IF_ERROR(node.growing->Truncate(0));
  }
  fi->keep_cache = 0;  // each open sees the frames completed before it
  // A writer reading back sees its own progress; a reader keeps its open-time header, so no
  // later stat (the size only grows) can show fewer bytes than that header claims.
  handle->reader =
      node.growing->OpenReader(handle->writer ? GrowingView::kLive : GrowingView::kSnapshot);
  return handle;
}

Result<std::unique_ptr<FileHandle>> OpenNode(Mount& m, const NodeInfo& node, fuse_file_info* fi) {
  switch (node.kind) {
    case NodeKind::kDirectory:
      return Status::Error(EISDIR, node.path + ": is a directory");
    case NodeKind::kArchived:
      return OpenArchived(m, node, fi);
    case NodeKind::kGrowing:
      return OpenGrowing(m, node, fi);
  }
  return Status::Error(EIO, node.path + ": unknown node kind");
}

// Gives `handle` to the Mount and its address to the kernel as fi->fh.
void Register(Mount& m, fuse_file_info* fi, std::unique_ptr<FileHandle> handle) {
  fi->fh = reinterpret_cast<uintptr_t>(m.handles.Add(std::move(handle)));
}

// If the opener was interrupted no release will come: drop the handle now.
void ReplyOpen(fuse_req_t req, Mount& m, fuse_file_info* fi, std::unique_ptr<FileHandle> handle) {
  Register(m, fi, std::move(handle));
  if (fuse_reply_open(req, fi) != 0) m.handles.Remove(HandleOf(fi));
}

void Open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Mount& m = MountOf(req);
  std::optional<NodeInfo> node = m.table->Get(ino);
  if (!node) {
    ReplyStatus(req, "open", NoSuchInode(ino));
    return;
  }
  auto handle = OpenNode(m, *node, fi);
  if (!handle.ok()) {
    ReplyStatus(req, "open", handle.status());
    return;
  }
  LogDebug("open " + node->path + ((fi->flags & O_ACCMODE) != O_RDONLY ? " for writing" : ""));
  ReplyOpen(req, m, fi, std::move(handle).value());
}

// Per-thread buffer for replies that need a copy. Bounded by the largest request, one per
// loop thread.
std::span<std::byte> ReadBuffer(size_t size) {
  thread_local std::vector<std::byte> buffer;
  if (buffer.size() < size) buffer.resize(size);
  return std::span<std::byte>(buffer.data(), size);
}

// A splice answer (bytes that sit in a file: a stored member in the archive, a growing
// member's spool file) is moved into a pipe of this thread first, and only a pipe holding
// every byte is handed to libfuse. A file that shrank under the read (an archive overwritten
// in place while mounted: `cp` truncates it first) would otherwise give a short reply, which
// the kernel takes for the end of the member: it lowers the file's size and keeps it (long
// attribute timeouts), so `cat` and `cp` end early with no error, until a remount. A short
// splice is EIO instead, as a short pread is. Owns its two fds; one per thread.
class SplicePipe {
 public:
  ~SplicePipe() { Reset(); }

  // Fills the pipe with exactly `n` bytes of `fd` at `offset`. EIO if the file ends first;
  // ENOSYS if no pipe large enough can be had (the caller then preads instead).
  Status Fill(int fd, uint64_t offset, size_t n) {
    if (!Ready(n)) return Status::Error(ENOSYS, "no splice pipe");
    loff_t at = static_cast<loff_t>(offset);
    size_t moved = 0;
    while (moved < n) {
      const ssize_t got =
          splice(fd, &at, write_.get(), nullptr, n - moved, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (got > 0) {
        moved += static_cast<size_t>(got);
        continue;
      }
      const int err = got == 0 ? 0 : errno;
      if (err == EINTR) continue;
      Reset();  // drop what was moved
      if (err == 0) {
        return Status::Error(EIO, "the file ended at " + std::to_string(offset + moved) +
                                      ", before the " + std::to_string(n) + " bytes at " +
                                      std::to_string(offset) +
                                      " (was the archive changed while mounted?)");
      }
      return Status::Error(err, std::string("splice failed: ") + std::strerror(err));
    }
    return Status::Ok();
  }
  int read_fd() const { return read_.get(); }
  // After a reply: a pipe libfuse did not empty (a failed reply) is dropped.
  void CheckEmpty() {
    int left = 0;
    if (read_.valid() && (ioctl(read_.get(), FIONREAD, &left) != 0 || left != 0)) Reset();
  }

 private:
  bool Ready(size_t n) {
    if (!read_.valid()) {
      int fds[2];
      if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0) return false;
      read_ = UniqueFd(fds[0]);
      write_ = UniqueFd(fds[1]);
      capacity_ = 0;
    }
    if (capacity_ < n) {
      const int got = fcntl(write_.get(), F_SETPIPE_SZ, static_cast<int>(kMaxRequestBytes));
      if (got < 0 || static_cast<size_t>(got) < n) return false;
      capacity_ = static_cast<size_t>(got);
    }
    return true;
  }
  void Reset() {
    read_ = UniqueFd();
    write_ = UniqueFd();
    capacity_ = 0;
  }

  UniqueFd read_, write_;
  size_t capacity_ = 0;
};

// Replies with the `n` bytes of `fd` at `offset` (a splice answer for inode `ino`), through
// this thread's SplicePipe, or read into `dest` where no pipe can be had; EIO if the file is
// shorter.
void ReplyFromFile(fuse_req_t req, fuse_ino_t ino, int fd, uint64_t offset, size_t n,
                   std::span<std::byte> dest) {
  thread_local SplicePipe pipe;
  Status filled = pipe.Fill(fd, offset, n);
  if (filled.code() == ENOSYS) {
    filled = PreadExact(fd, dest.data(), n, offset, "the file");
    if (filled.ok()) {
      fuse_reply_buf(req, reinterpret_cast<const char*>(dest.data()), n);
      return;
    }
  }
  if (!filled.ok()) {
    Mount& m = MountOf(req);
    const std::optional<NodeInfo> node = m.table->Get(ino);
    ReplyStatus(req, "read",
                filled.WithContext(m.archive_path + ": member " +
                                   (node ? node->path : "inode " + std::to_string(ino))));
    return;
  }
  // FUSE_BUFVEC_INIT is a compound literal, which ISO C++ rejects (-Wpedantic).
  fuse_bufvec buf{};
  buf.count = 1;
  buf.buf[0].size = n;
  // A pipe: no offset, and read until `n` bytes (without a splice-capable kernel libfuse
  // reads it into memory).
  buf.buf[0].flags = static_cast<fuse_buf_flags>(FUSE_BUF_IS_FD | FUSE_BUF_FD_RETRY);
  buf.buf[0].fd = pipe.read_fd();
  fuse_reply_data(req, &buf, FUSE_BUF_SPLICE_MOVE);
  pipe.CheckEmpty();
}

void Read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
  Mount& m = MountOf(req);
  MemberReader& reader = *HandleOf(fi)->reader;
  const uint64_t offset = static_cast<uint64_t>(off);
  const uint64_t member_size = reader.size();
  if (offset >= member_size) {
    fuse_reply_buf(req, nullptr, 0);
    return;
  }
  std::span<std::byte> dest = ReadBuffer(
      static_cast<size_t>(std::min<uint64_t>({size, kMaxRequestBytes, member_size - offset})));
  Result<ReadAnswer> answer = reader.Read(offset, dest);
  if (!answer.ok()) {
    ReplyStatus(req, "read", answer.status());  // core names the archive, member and cause
    return;
  }
  m.stats.bytes_served.fetch_add(answer->length, std::memory_order_relaxed);
  if (!answer->pieces.empty()) {
    // Bytes held in the span cache: one writev from there, no copy through `dest`. A span
    // is usually 64 KiB or more, but a seek table's chunks may be as small as one byte,
    // and a writev takes at most IOV_MAX vectors, one of them libfuse's header: more
    // pieces than that would make the reply fail, and the reader would wait for it
    // forever. Those go through `dest`.
    if (answer->pieces.size() < static_cast<size_t>(IOV_MAX)) {
      std::vector<iovec> iov;
      iov.reserve(answer->pieces.size());
      for (std::span<const std::byte> piece : answer->pieces) {
        iov.push_back(iovec{const_cast<std::byte*>(piece.data()), piece.size()});
      }
      fuse_reply_iov(req, iov.data(), static_cast<int>(iov.size()));
      return;
    }
    size_t done = 0;
    for (std::span<const std::byte> piece : answer->pieces) {
      std::memcpy(dest.data() + done, piece.data(), piece.size());
      done += piece.size();
    }
    fuse_reply_buf(req, reinterpret_cast<const char*>(dest.data()), done);
    return;
  }
  if (answer->splice_fd < 0) {
    fuse_reply_buf(req, reinterpret_cast<const char*>(dest.data()), answer->length);
    return;
  }
  ReplyFromFile(req, ino, answer->splice_fd, answer->splice_offset, answer->length, dest);
}

void Write(fuse_req_t req, fuse_ino_t ino, const char* data, size_t size, off_t off,
           fuse_file_info* fi) {
  FileHandle* h = HandleOf(fi);
  if (!h->writer) {
    ReplyStatus(req, "write", Status::Error(EBADF, "write through a handle opened read-only"));
    return;
  }
  Mount& m = MountOf(req);  // req is gone once replied to
  // Data bytes are acknowledged before their pwrite into the spool file, so that the writer
  // sends its next write meanwhile (GrowingMember::Write says what that promises).
  bool replied = false;
  auto accepted = [&](size_t n) {
    fuse_reply_write(req, n);
    replied = true;
  };
  Result<size_t> n = h->growing->Write(
      &h->session, static_cast<uint64_t>(off),
      std::span<const std::byte>(reinterpret_cast<const std::byte*>(data), size), accepted);
  if (n.ok()) m.table->Touch(ino, Now());  // ls -l shows when the member last grew
  if (replied) return;                     // a failure was logged, and the session keeps it
  if (!n.ok()) {
    ReplyStatus(req, "write", n.status());
    return;
  }
  fuse_reply_write(req, *n);
}

// close(): a writer learns of a write that failed after it was acknowledged.
void Flush(fuse_req_t req, fuse_ino_t /*ino*/, fuse_file_info* fi) {
  FileHandle* h = HandleOf(fi);
  if (!h->writer || h->growing == nullptr) {
    fuse_reply_err(req, 0);
    return;
  }
  ReplyStatus(req, "close", h->growing->WriterStatus(&h->session));
}

// Saves the index when a reader closes after new checkpoints were learned, at most every
// few seconds: a daemon that is killed later keeps what the first passes cost. The full
// save at unmount (Destroy) catches the rest.
void MaybeSaveIndex(Mount& m) {
  static std::atomic<int64_t> last_save{0};
  constexpr int64_t kMinSecondsBetweenSaves = 5;
  int64_t now = Now();
  int64_t last = last_save.load();
  if (now - last < kMinSecondsBetweenSaves || !m.archive->index_dirty()) return;
  if (!last_save.compare_exchange_strong(last, now)) return;  // another thread saves
  Status s = m.archive->SaveIndex();
  if (!s.ok()) LogWarning("cannot save the index: " + s.message());
}

void Release(fuse_req_t req, fuse_ino_t /*ino*/, fuse_file_info* fi) {
  Mount& m = MountOf(req);
  std::unique_ptr<FileHandle> handle = m.handles.Remove(HandleOf(fi));
  const bool archived = handle != nullptr && handle->archived;
  handle.reset();          // ends a writer session
  fuse_reply_err(req, 0);  // reply first: the save below must not delay close()
  if (archived) MaybeSaveIndex(m);
}

void Fsync(fuse_req_t req, fuse_ino_t /*ino*/, int /*datasync*/, fuse_file_info* fi) {
  FileHandle* h = HandleOf(fi);
  // Archived members are already on disk.
  ReplyStatus(req, "fsync", h->growing == nullptr ? Status::Ok() : h->growing->Fsync(&h->session));
}

// ---- creating and removing names ----

// The frame layout a new member gets from -o frame=, if any pattern matches.
Result<std::optional<NpyHeader>> DeclaredLayout(const Mount& m, const std::string& path) {
  if (!IsNpyName(path)) return std::optional<NpyHeader>();
  const FramePattern* p = MatchFramePattern(m.options.frames, path);
  if (p == nullptr) return std::optional<NpyHeader>();
  auto header = NpyHeader::ForFrames(p->descr, p->shape, /*fortran_order=*/false, 0);
  if (!header.ok()) {
    return header.status().WithContext(path + ": -o frame=" + p->pattern);
  }
  return std::optional<NpyHeader>(std::move(header).value());
}

// Creates a new growing member `name` in `parent`. EEXIST for an archived member's name.
// A name every zip reader can read back: npzfs writes member names as UTF-8 (numpy, zipfile
// and libzip refuse an archive whose UTF-8-flagged name is not UTF-8, and the zip writer
// refuses to write one), so a new file or directory gets such a name or EINVAL. And a name
// npzfs itself can serve again: the kernel lets a FUSE daemon accept components of up to 1024
// bytes, but a reader of the archive skips a member whose path has a component over NAME_MAX
// or is PATH_MAX long (no program could open it), so such a name is ENAMETOOLONG here rather
// than a member that every later mount hides.
Status CheckNewName(const std::string& name) {
  if (name.size() > NAME_MAX) {
    return Status::Error(ENAMETOOLONG, PrintableName(name) + ": a name of " +
                                           std::to_string(name.size()) + " bytes (the limit is " +
                                           std::to_string(NAME_MAX) + ")");
  }
  if (IsValidUtf8(name)) return Status::Ok();
  return Status::Error(EINVAL, PrintableName(name) +
                                   ": not valid UTF-8; member names are UTF-8 in the archive "
                                   "(numpy could not read it otherwise)");
}

// The path of a new member or directory: shorter than PATH_MAX (see CheckNewName).
Result<std::string> NewChildPath(Mount& m, fuse_ino_t parent, const std::string& name) {
  NPZ_ASSIGN_OR_RETURN(std::string path, m.table->ChildPath(parent, name));
  if (path.size() >= PATH_MAX) {
    return Status::Error(
        ENAMETOOLONG, PrintableName(name) + ": its path would be " + std::to_string(path.size()) +
                          " bytes long (the limit is " + std::to_string(PATH_MAX - 1) + ")");
  }
  return path;
}

// numpy's key of a member is its name without ".npy": "rx" and "rx.npy" are both z["rx"],
// and numpy shows only one of them. A new name whose key a file of the directory already
// has is EEXIST, with a log line (the name itself is free, so the errno alone would puzzle).
// `renamed`: the node being renamed to `name`, which does not count.
Status CheckNumpyKeyFree(Mount& m, fuse_ino_t parent, const std::string& name,
                         fuse_ino_t renamed = 0) {
  const std::string key(NumpyKey(name));
  const std::string other = key == name ? name + ".npy" : key;  // the other name of that key
  std::optional<NodeInfo> node =
      other.empty() ? std::nullopt : m.table->Lookup(parent, other, /*count=*/false);
  if (!node || node->kind == NodeKind::kDirectory || node->ino == renamed) return Status::Ok();
  Status taken = Status::Error(EEXIST, PrintableName(name) + ": numpy would give it the key of " +
                                           node->path + " (a name less .npy is its key)");
  LogWarning(taken.message());
  return taken;
}

Result<NodeInfo> CreateMember(Mount& m, fuse_ino_t parent, const std::string& name) {
  if (!Writable(m)) return ReadOnlyMount(name);
  NPZ_RETURN_IF_ERROR(CheckNewName(name));
  if (m.table->Lookup(parent, name, /*count=*/false)) {
    return Status::Error(EEXIST, name + ": exists");
  }
  NPZ_RETURN_IF_ERROR(CheckNumpyKeyFree(m, parent, name));
  NPZ_ASSIGN_OR_RETURN(std::string path, NewChildPath(m, parent, name));
  NPZ_ASSIGN_OR_RETURN(std::optional<NpyHeader> declared, DeclaredLayout(m, path));
  NPZ_ASSIGN_OR_RETURN(Spool * spool,
                       m.spool.GetOrCreate(m.spool_dir, m.archive_path, m.append_mode()));
  NPZ_ASSIGN_OR_RETURN(std::shared_ptr<GrowingMember> member, spool->Create(path, declared));
  auto node = m.table->AddChild(parent, name, NodeKind::kGrowing, member, Now());
  if (!node.ok()) {
    // Lost a race with another create of the same name: undo ours.
    Status undo = spool->Remove(path);
    if (!undo.ok()) LogWarning("create " + path + ": cannot undo: " + undo.message());
    return node.status();
  }
  LogInfo("new member " + path + (declared ? " (frame layout from -o frame=)" : ""));
  return node;
}

void Create(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t /*mode*/,
            fuse_file_info* fi) {
  Mount& m = MountOf(req);
  auto node = CreateMember(m, parent, name);
  if (!node.ok()) {
    ReplyStatus(req, "create", node.status());
    return;
  }
  auto handle = OpenGrowing(m, *node, fi);
  if (!handle.ok()) {
    // The name exists now (the reply below is an error, so the kernel does not count it).
    ForgetOne(m, node->ino, 1);
    ReplyStatus(req, "create", handle.status());
    return;
  }
  fuse_entry_param e = EntryOf(m, *node);
  Register(m, fi, std::move(handle).value());
  if (fuse_reply_create(req, &e, fi) != 0) m.handles.Remove(HandleOf(fi));
}

void MkNod(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, dev_t /*rdev*/) {
  Mount& m = MountOf(req);
  if (!S_ISREG(mode)) {
    ReplyStatus(req, "mknod",
                Status::Error(EPERM, std::string(name) + ": only regular files can be members"));
    return;
  }
  auto node = CreateMember(m, parent, name);
  if (!node.ok()) {
    ReplyStatus(req, "mknod", node.status());
    return;
  }
  fuse_entry_param e = EntryOf(m, *node);
  fuse_reply_entry(req, &e);
}

// Links: a zip member is a file of its own, so neither kind can be made (EPERM, logged, as
// mknod of a non-file; without these handlers symlink was ENOSYS and neither was logged).
void Link(fuse_req_t req, fuse_ino_t /*ino*/, fuse_ino_t /*parent*/, const char* name) {
  Mount& m = MountOf(req);
  ReplyStatus(req, "link",
              Writable(m) ? Status::Error(EPERM, std::string(name) +
                                                     ": hard links cannot be made (a member is "
                                                     "a file of its own)")
                          : ReadOnlyMount(name));
}

void Symlink(fuse_req_t req, const char* /*target*/, fuse_ino_t /*parent*/, const char* name) {
  Mount& m = MountOf(req);
  ReplyStatus(req, "symlink",
              Writable(m)
                  ? Status::Error(EPERM, std::string(name) + ": symbolic links cannot be members")
                  : ReadOnlyMount(name));
}

void MkDir(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t /*mode*/) {
  Mount& m = MountOf(req);
  if (!Writable(m)) {
    ReplyStatus(req, "mkdir", ReadOnlyMount(name));
    return;
  }
  if (Status named = CheckNewName(name); !named.ok()) {
    ReplyStatus(req, "mkdir", named);
    return;
  }
  if (auto path = NewChildPath(m, parent, name); !path.ok()) {
    ReplyStatus(req, "mkdir", path.status());
    return;
  }
  // A directory exists only to hold new members: where none can be made, neither can it.
  if (auto spool = m.spool.GetOrCreate(m.spool_dir, m.archive_path, m.append_mode()); !spool.ok()) {
    ReplyStatus(req, "mkdir", spool.status());
    return;
  }
  auto node = m.table->AddChild(parent, name, NodeKind::kDirectory, nullptr, Now());
  if (!node.ok()) {
    ReplyStatus(req, "mkdir", node.status());
    return;
  }
  fuse_entry_param e = EntryOf(m, *node);
  fuse_reply_entry(req, &e);
}

Status UnlinkNode(Mount& m, fuse_ino_t parent, const char* name) {
  std::optional<NodeInfo> node = m.table->Lookup(parent, name, /*count=*/false);
  if (!node) return Status::Error(ENOENT, std::string(name) + ": no such member");
  if (node->kind == NodeKind::kDirectory) {
    return Status::Error(EISDIR, node->path + ": is a directory");
  }
  if (node->kind == NodeKind::kArchived) {
    return Writable(m) ? Status::Error(EPERM, node->path + ": archived members cannot be removed")
                       : ReadOnlyMount(node->path);
  }
  // A new member exists only in a spool.
  NPZ_RETURN_IF_ERROR(m.spool.get()->Remove(node->path));  // EPERM once the member holds data
  return m.table->Detach(parent, name);
}

void Unlink(fuse_req_t req, fuse_ino_t parent, const char* name) {
  ReplyStatus(req, "unlink", UnlinkNode(MountOf(req), parent, name));
}

Status RemoveDirectory(Mount& m, fuse_ino_t parent, const char* name) {
  if (!Writable(m)) return ReadOnlyMount(name);
  std::optional<NodeInfo> node = m.table->Lookup(parent, name, /*count=*/false);
  if (!node) return Status::Error(ENOENT, std::string(name) + ": no such directory");
  if (node->kind != NodeKind::kDirectory) {
    return Status::Error(ENOTDIR, node->path + ": not a directory");
  }
  // Directories holding archived members are never empty; an empty one was made by mkdir.
  return m.table->Detach(parent, name);
}

void RmDir(fuse_req_t req, fuse_ino_t parent, const char* name) {
  ReplyStatus(req, "rmdir", RemoveDirectory(MountOf(req), parent, name));
}

Status RenameNode(Mount& m, fuse_ino_t parent, const char* name, fuse_ino_t new_parent,
                  const char* new_name, unsigned int flags) {
  if (!Writable(m)) return ReadOnlyMount(name);
  // RENAME_NOREPLACE is what a rename here does anyway (an existing target is EEXIST
  // below), and `mv` asks for it first: refusing it only made every `mv` log an error.
  if ((flags & ~static_cast<unsigned int>(RENAME_NOREPLACE)) != 0) {
    return Status::Error(
        EINVAL, std::string(name) + ": RENAME_EXCHANGE and RENAME_WHITEOUT are not offered");
  }
  std::optional<NodeInfo> node = m.table->Lookup(parent, name, /*count=*/false);
  if (!node) return Status::Error(ENOENT, std::string(name) + ": no such member");
  NPZ_RETURN_IF_ERROR(CheckNewName(new_name));
  if (node->kind != NodeKind::kGrowing) {
    return Status::Error(EPERM, node->path + ": only new, empty members can be renamed");
  }
  if (m.table->Lookup(new_parent, new_name, /*count=*/false)) {
    return Status::Error(EEXIST, std::string(new_name) +
                                     ": exists (replacing a member would "
                                     "drop its data)");
  }
  NPZ_RETURN_IF_ERROR(CheckNumpyKeyFree(m, new_parent, new_name, node->ino));
  NPZ_ASSIGN_OR_RETURN(std::string new_path, NewChildPath(m, new_parent, new_name));
  // The member object stays the same (the inode table holds it): only its name moves.
  NPZ_RETURN_IF_ERROR(m.spool.get()->Rename(node->path, new_path));  // EPERM once it has data
  return m.table->Move(parent, name, new_parent, new_name);
}

void Rename(fuse_req_t req, fuse_ino_t parent, const char* name, fuse_ino_t new_parent,
            const char* new_name, unsigned int flags) {
  ReplyStatus(req, "rename", RenameNode(MountOf(req), parent, name, new_parent, new_name, flags));
}

// ---- extended attributes ----

// Replies an attribute value following the getxattr size protocol.
void ReplyXattrValue(fuse_req_t req, const std::string& value, size_t size) {
  if (size == 0) {
    fuse_reply_xattr(req, value.size());
  } else if (size < value.size()) {
    fuse_reply_err(req, ERANGE);
  } else {
    fuse_reply_buf(req, value.data(), value.size());
  }
}

// Only user.* attributes exist here. Answering ENOTSUP for the others (security.selinux,
// system.posix_acl_access, ...) tells `ls -l` once per mount that the filesystem has no
// labels and no ACLs; ENODATA would make it ask again for every file.
bool UserAttribute(std::string_view name) { return name.starts_with("user."); }

Status NotSupported(std::string_view name) {
  return Status::Error(ENOTSUP, std::string(name) + ": only user.* attributes exist here");
}

bool LayoutAttribute(std::string_view name) {
  return name == kDescrAttribute || name == kShapeAttribute || name == kFortranAttribute;
}

// setxattr's check of XATTR_CREATE / XATTR_REPLACE and its set happen under this lock, so
// two setxattr calls with XATTR_CREATE on one attribute never both succeed. (A header
// written at the same time may still set the layout between the two: the attribute then
// holds whatever came last, as with any two writers of one attribute.)
std::mutex g_setxattr_mu;

Status SetGrowingXattr(GrowingMember& member, const std::string& path, const char* name,
                       std::string_view value, int flags) {
  std::lock_guard lock(g_setxattr_mu);
  if ((flags & (XATTR_CREATE | XATTR_REPLACE)) != 0) {
    Result<std::string> current = member.GetAttribute(name);
    if (!current.ok() && current.status().code() != ENODATA) return current.status();
    if (current.ok() && (flags & XATTR_CREATE) != 0) {
      return Status::Error(EEXIST, path + ": " + name + " is already set (XATTR_CREATE)");
    }
    if (!current.ok() && (flags & XATTR_REPLACE) != 0) {
      return Status::Error(ENODATA, path + ": " + name + " is not set (XATTR_REPLACE)");
    }
  }
  return member.SetAttribute(name, value);
}

Status SetNodeXattr(Mount& m, fuse_ino_t ino, const char* name, const char* value, size_t size,
                    int flags) {
  if (!UserAttribute(name)) return NotSupported(name);
  std::optional<NodeInfo> node = m.table->Get(ino);
  if (!node) return NoSuchInode(ino);
  if (!Writable(m)) return ReadOnlyMount(node->path);
  if (node->kind == NodeKind::kGrowing) {
    if (node->growing == nullptr) return Status::Error(ENOENT, node->path + ": was removed");
    return SetGrowingXattr(*node->growing, node->path, name, std::string_view(value, size), flags);
  }
  if (node->kind == NodeKind::kArchived && LayoutAttribute(name)) {
    return Status::Error(EPERM, node->path + ": " + name +
                                    " is read-only: an archived member's layout is its header");
  }
  return Status::Error(ENOTSUP, node->path + ": " + name + ": only new members take attributes");
}

void SetXattr(fuse_req_t req, fuse_ino_t ino, const char* name, const char* value, size_t size,
              int flags) {
  ReplyStatus(req, "setxattr", SetNodeXattr(MountOf(req), ino, name, value, size, flags),
              {ENOTSUP});
}

// user.npzfs.stats: counters as one JSON object, padded with spaces to a fixed length so that
// a value that grows between getxattr's size query and its read still fits.
std::string StatsJson(Mount& m) {
  constexpr size_t kStatsLength = 512;
  uint64_t new_members = 0, frames = 0;
  if (Spool* spool = m.spool.get()) {
    for (const auto& member : spool->members()) {
      ++new_members;
      frames += member->frame_count();
    }
  }
  const ArchiveStats a = m.archive != nullptr ? m.archive->stats() : ArchiveStats{};
  const std::pair<const char*, uint64_t> fields[] = {
      {"requests", m.stats.requests.load()}, {"bytes_served", m.stats.bytes_served.load()},
      {"spans_inflated", a.spans_inflated},  {"cache_hits", a.cache_hits},
      {"cache_misses", a.cache_misses},      {"first_pass_spans", a.first_pass_spans},
      {"open_files", m.handles.size()},      {"members_being_written", m.stats.writers.load()},
      {"new_members", new_members},          {"frames_written", frames},
      {"speculations", a.speculations},
  };
  std::string json = "{";
  for (const auto& [key, value] : fields) {
    if (json.size() > 1) json += ", ";
    json.append("\"").append(key).append("\": ").append(std::to_string(value));
  }
  json += "}";
  if (json.size() < kStatsLength) json.append(kStatsLength - json.size(), ' ');
  return json;
}

// The attributes of the mount root: the `npz umount` protocol and the statistics.
Result<std::string> RootXattr(Mount& m, std::string_view name) {
  if (name == kPidAttribute) return std::to_string(getpid());
  if (name == kResultAttribute) return m.result_path();
  if (name == kProgressAttribute) return m.writable() ? m.runtime.progress : std::string();
  if (name == kStatsAttribute) return StatsJson(m);
  return Status::Error(ENODATA, std::string("/: no attribute ") + std::string(name));
}

Result<std::string> ArchivedXattr(Mount& m, const NodeInfo& node, std::string_view name) {
  std::optional<NpyHeader> layout =
      LayoutAttribute(name) ? m.layouts.Get(*m.archive, node.member_index) : std::nullopt;
  if (layout && name == kDescrAttribute) return DtypeText(*layout);
  if (layout && name == kShapeAttribute) return AxesText(layout->frame_shape());
  if (layout && name == kFortranAttribute) return std::string(layout->fortran_order() ? "1" : "0");
  return Status::Error(ENODATA, node.path + ": no attribute " + std::string(name));
}

// The value of attribute `name` of a node. ENOTSUP outside user.*, ENODATA for the rest.
Result<std::string> NodeXattr(Mount& m, const NodeInfo& node, std::string_view name) {
  if (!UserAttribute(name)) return NotSupported(name);
  if (node.ino == FUSE_ROOT_ID) return RootXattr(m, name);
  if (node.kind == NodeKind::kGrowing && node.growing != nullptr) {
    return node.growing->GetAttribute(name);
  }
  if (node.kind == NodeKind::kArchived) return ArchivedXattr(m, node, name);
  return Status::Error(ENODATA, node.path + ": no attribute " + std::string(name));
}

void GetXattr(fuse_req_t req, fuse_ino_t ino, const char* name, size_t size) {
  Mount& m = MountOf(req);
  std::optional<NodeInfo> node = m.table->Get(ino);
  if (!node) {
    ReplyStatus(req, "getxattr", NoSuchInode(ino));
    return;
  }
  auto value = NodeXattr(m, *node, name);
  if (!value.ok()) {
    ReplyStatus(req, "getxattr", value.status(), {ENOTSUP});  // ENODATA is expected too
    return;
  }
  ReplyXattrValue(req, *value, size);
}

std::vector<std::string> XattrNames(Mount& m, const NodeInfo& node) {
  if (node.ino == FUSE_ROOT_ID) {
    return {std::string(kPidAttribute), std::string(kResultAttribute),
            std::string(kProgressAttribute), std::string(kStatsAttribute)};
  }
  if (node.kind == NodeKind::kGrowing) {
    return node.growing != nullptr ? node.growing->ListAttributes() : std::vector<std::string>{};
  }
  if (node.kind == NodeKind::kArchived && m.layouts.Get(*m.archive, node.member_index)) {
    return {std::string(kDescrAttribute), std::string(kShapeAttribute),
            std::string(kFortranAttribute)};
  }
  return {};
}

void ListXattr(fuse_req_t req, fuse_ino_t ino, size_t size) {
  Mount& m = MountOf(req);
  std::optional<NodeInfo> node = m.table->Get(ino);
  if (!node) {
    ReplyStatus(req, "listxattr", NoSuchInode(ino));
    return;
  }
  std::string list;
  for (const std::string& n : XattrNames(m, *node)) list += n + '\0';
  ReplyXattrValue(req, list, size);
}

void RemoveXattr(fuse_req_t req, fuse_ino_t ino, const char* name) {
  Mount& m = MountOf(req);
  std::optional<NodeInfo> node = m.table->Get(ino);
  if (!node) {
    ReplyStatus(req, "removexattr", NoSuchInode(ino));
    return;
  }
  const std::string what = (node->path.empty() ? std::string("/") : node->path) + ": " + name;
  Status s = !UserAttribute(name) ? NotSupported(what)
             : Writable(m)
                 ? Status::Error(EPERM, what +
                                            ": attributes cannot be removed (a layout is "
                                            "changed by setting it again before any data)")
                 : ReadOnlyMount(what);
  ReplyStatus(req, "removexattr", s, {ENOTSUP});
}

// ---- statfs ----

void StatFs(fuse_req_t req, fuse_ino_t /*ino*/) {
  Mount& m = MountOf(req);
  // Numbers of the filesystem that holds the spool (or the archive): what is free there is
  // what new members can use.
  struct statvfs st {};
  Spool* spool = m.spool.get();
  std::string where = spool != nullptr ? spool->dir() : DirName(m.archive_path);
  if (statvfs(where.c_str(), &st) != 0) {
    st = {};
    st.f_bsize = 4096;
    st.f_frsize = 4096;
  }
  uint64_t archive_bytes = 0;
  if (m.archive != nullptr) {
    for (const ArchiveMember& member : m.archive->members()) {
      archive_bytes += member.entry.uncompressed_size;
    }
  }
  uint64_t frsize = st.f_frsize == 0 ? 4096 : st.f_frsize;
  uint64_t used_blocks = (archive_bytes + frsize - 1) / frsize;
  if (!Writable(m)) {
    st.f_bfree = 0;
    st.f_bavail = 0;
  }
  st.f_blocks = used_blocks + st.f_bfree;
  st.f_files = m.table->size() + (Writable(m) ? st.f_ffree : 0);
  if (!Writable(m)) st.f_ffree = st.f_favail = 0;
  st.f_namemax = 255;
  fuse_reply_statfs(req, &st);
}

fuse_lowlevel_ops MakeOperations() {
  fuse_lowlevel_ops ops{};
  ops.init = Init;
  ops.destroy = Destroy;
  ops.lookup = Lookup;
  ops.forget = Forget;
  ops.forget_multi = ForgetMulti;
  ops.getattr = GetAttr;
  ops.setattr = SetAttr;
  ops.readdir = ReadDir;
  ops.readdirplus = ReadDirPlus;
  ops.open = Open;
  ops.read = Read;
  ops.write = Write;
  ops.flush = Flush;
  ops.release = Release;
  ops.fsync = Fsync;
  ops.create = Create;
  ops.mknod = MkNod;
  ops.link = Link;
  ops.symlink = Symlink;
  ops.mkdir = MkDir;
  ops.unlink = Unlink;
  ops.rmdir = RmDir;
  ops.rename = Rename;
  ops.setxattr = SetXattr;
  ops.getxattr = GetXattr;
  ops.listxattr = ListXattr;
  ops.removexattr = RemoveXattr;
  ops.statfs = StatFs;
  return ops;
}

}  // namespace

const fuse_lowlevel_ops& NpzfsOperations() {
  static const fuse_lowlevel_ops ops = MakeOperations();
  return ops;
}

}  // namespace npzfs::fs
