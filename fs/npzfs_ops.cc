// The FUSE handlers. Shape of every handler (libfuse passthrough_hp / hello_ll style):
// look the inode up in the table (a copy, no lock held afterwards), call core, reply once.
// Errors are replied with a positive errno; a core Status is logged once here, at the FUSE
// boundary, unless it is an expected answer (ENOENT on lookup, ENODATA on getxattr, ...).
//
// Caching policy (FACTS.md):
// - Archived members never change: keep_cache and long entry/attr timeouts, and the page
//   cache is used (no direct_io) so that numpy can mmap them.
// - Growing members change under readers: attr/entry timeout 0 so stat follows the growth,
//   reader opens without keep_cache (each open() drops stale pages and sees new frames),
//   and writer handles use direct_io so written bytes never enter the page cache at the
//   writer's offsets (the visible file differs from the byte stream written).
#include "fs/npzfs_ops.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <span>
#include <vector>

#include "fs/log.h"
#include "npzfs/npy_header.h"

namespace npzfs::fs {
namespace {

constexpr double kImmutableTimeout = 86400.0;  // one day: archived members never change
constexpr const char* kPidAttribute = "user.npzfs.pid";
constexpr const char* kResultAttribute = "user.npzfs.result";

// One open file. Readers of archived members hold a MemberReader; handles of new members
// hold the GrowingMember, plus a writer session when opened for writing.
struct FileHandle {
  std::shared_ptr<MemberReader> reader;    // archived member
  std::shared_ptr<GrowingMember> growing;  // new member
  WriterSession session;                   // token != 0 while this handle is the writer
  bool writer = false;
  // What a reader of a growing member saw at open: the header keeps this count, so no later
  // stat (the size only grows) can show fewer bytes than the header claims.
  ReaderSnapshot snapshot;
};

Mount& MountOf(fuse_req_t req) { return *static_cast<Mount*>(fuse_req_userdata(req)); }

FileHandle* HandleOf(const fuse_file_info* fi) {
  return reinterpret_cast<FileHandle*>(static_cast<uintptr_t>(fi->fh));
}

bool Writable(const Mount& m) { return m.spool != nullptr; }

// Replies `status`'s errno and logs its message once.
void ReplyError(fuse_req_t req, const char* op, const Status& status) {
  LogError(std::string(op) + ": " + status.message());
  fuse_reply_err(req, status.code());
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
      // Never the archive's own mode bits: numpy stores 0600 without file-type bits, which
      // the kernel would answer with EIO (FACTS.md).
      const ArchiveMember& member = m.archive->members()[node.member_index];
      st.st_mode = S_IFREG | 0444;
      st.st_nlink = 1;
      st.st_size = static_cast<off_t>(member.entry.uncompressed_size);
      st.st_blocks = static_cast<blkcnt_t>((member.entry.compressed_size + 511) / 512);
      break;
    }
    case NodeKind::kGrowing: {
      uint64_t size = node.growing->visible_size();
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
  // Splice stored members straight from the archive file into /dev/fuse.
  if (conn->capable & FUSE_CAP_SPLICE_WRITE) conn->want |= FUSE_CAP_SPLICE_WRITE;
  if (conn->capable & FUSE_CAP_SPLICE_MOVE) conn->want |= FUSE_CAP_SPLICE_MOVE;
  // The kernel must never cache writes and flush them later at the writer's offsets.
  conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
}

void Destroy(void* userdata) {
  auto* m = static_cast<Mount*>(userdata);
  if (m->archive != nullptr) {
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

void Forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
  MountOf(req).table->Forget(ino, nlookup);
  fuse_reply_none(req);
}

void ForgetMulti(fuse_req_t req, size_t count, fuse_forget_data* forgets) {
  Mount& m = MountOf(req);
  for (size_t i = 0; i < count; ++i) m.table->Forget(forgets[i].ino, forgets[i].nlookup);
  fuse_reply_none(req);
}

void GetAttr(fuse_req_t req, fuse_ino_t ino, fuse_file_info* /*fi*/) {
  Mount& m = MountOf(req);
  std::optional<NodeInfo> node = m.table->Get(ino);
  if (!node) {
    fuse_reply_err(req, ENOENT);
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
    fuse_reply_err(req, ENOENT);
    return;
  }
  if (node->kind != NodeKind::kGrowing) {
    // Archived members and directories are immutable.
    fuse_reply_err(req, Writable(m) ? EPERM : EROFS);
    return;
  }
  if (to_set & FUSE_SET_ATTR_SIZE) {
    Status s = node->growing->Truncate(static_cast<uint64_t>(attr->st_size));
    if (!s.ok()) {
      ReplyError(req, "truncate", s);
      return;
    }
  }
  // Mode, owner and time changes (cp -p, touch) are accepted and ignored: the member's
  // attributes are fixed by the product.
  struct stat st = StatOf(m, *node);
  fuse_reply_attr(req, &st, 0.0);
}

// Lists a directory; with `plus` (READDIRPLUS) every entry carries its attributes, so
// `ls -l` on 10,000 members needs no LOOKUP per file. Each plus entry other than "." and
// ".." counts as a lookup (the kernel will FORGET it), so the count is taken only once the
// entry is known to fit in the reply.
void ListDirectory(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, bool plus) {
  Mount& m = MountOf(req);
  auto entries = m.table->List(ino);
  if (!entries.ok()) {
    fuse_reply_err(req, entries.status().code());
    return;
  }
  // Offsets: 1 = ".", 2 = "..", 3 + i = entries[i].
  std::vector<char> buf(size);
  size_t used = 0;
  auto add = [&](const char* name, fuse_ino_t child_ino, mode_t mode, off_t next, bool dot) {
    char* dest = buf.data() + used;
    const size_t room = size - used;
    if (!plus) {
      struct stat st {};
      st.st_ino = child_ino;
      st.st_mode = mode;
      size_t need = fuse_add_direntry(req, nullptr, 0, name, nullptr, 0);
      if (need > room) return false;
      used += fuse_add_direntry(req, dest, room, name, &st, next);
      return true;
    }
    if (fuse_add_direntry_plus(req, nullptr, 0, name, nullptr, 0) > room) return false;
    fuse_entry_param e{};
    if (dot) {
      e.attr.st_ino = child_ino;
      e.attr.st_mode = mode;
    } else {
      std::optional<NodeInfo> node = m.table->Lookup(ino, name, /*count=*/true);
      if (!node) return true;  // removed since List: skip it
      e = EntryOf(m, *node);
    }
    used += fuse_add_direntry_plus(req, dest, room, name, &e, next);
    return true;
  };
  bool room = true;
  if (off < 1) room = add(".", ino, S_IFDIR, 1, true);
  if (room && off < 2) room = add("..", m.table->ParentOf(ino), S_IFDIR, 2, true);
  for (size_t i = off < 2 ? 0 : static_cast<size_t>(off - 2); room && i < entries->size(); ++i) {
    const DirEntry& entry = (*entries)[i];
    mode_t mode = entry.kind == NodeKind::kDirectory ? S_IFDIR : S_IFREG;
    room = add(entry.name.c_str(), entry.ino, mode, static_cast<off_t>(i + 3), false);
  }
  fuse_reply_buf(req, buf.data(), used);
}

void ReadDir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* /*fi*/) {
  ListDirectory(req, ino, size, off, /*plus=*/false);
}

void ReadDirPlus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* /*fi*/) {
  ListDirectory(req, ino, size, off, /*plus=*/true);
}

// ---- open / read / write ----

void OpenArchived(fuse_req_t req, Mount& m, const NodeInfo& node, fuse_file_info* fi) {
  if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC)) {
    // The contract: a name in the archive cannot be written, as if create() found it.
    fuse_reply_err(req, Writable(m) ? EEXIST : EROFS);
    return;
  }
  const ArchiveMember& member = m.archive->members()[node.member_index];
  if (member.open_errno != 0) {
    LogError("open " + node.path + ": " + member.open_error);
    fuse_reply_err(req, member.open_errno);
    return;
  }
  auto reader = m.archive->OpenMember(node.member_index);
  if (!reader.ok()) {
    ReplyError(req, "open", reader.status());
    return;
  }
  auto handle = std::make_unique<FileHandle>();
  handle->reader = std::move(reader).value();
  fi->keep_cache = 1;  // immutable: the page cache stays valid between opens
  fi->fh = reinterpret_cast<uintptr_t>(handle.release());  // freed in Release
  if (fuse_reply_open(req, fi) != 0) {
    // The opener was interrupted: no release will come for this handle.
    std::unique_ptr<FileHandle> lost(HandleOf(fi));
  }
}

// Makes a handle for a growing member; a writer begins its session here (EBUSY for a second
// writer). Returns the errno to reply, or 0 with fi->fh set.
Status MakeGrowingHandle(const NodeInfo& node, fuse_file_info* fi) {
  auto handle = std::make_unique<FileHandle>();
  handle->growing = node.growing;
  if ((fi->flags & O_ACCMODE) != O_RDONLY) {
    NPZ_RETURN_IF_ERROR(node.growing->BeginWrite(&handle->session, (fi->flags & O_APPEND) != 0));
    handle->writer = true;
    if (fi->flags & O_TRUNC) {
      Status s = node.growing->Truncate(0);
      if (!s.ok()) {
        node.growing->EndWrite(&handle->session);
        return s;
      }
    }
    fi->direct_io = 1;  // written bytes must never enter the page cache (FACTS.md)
  } else if (fi->flags & O_TRUNC) {
    NPZ_RETURN_IF_ERROR(node.growing->Truncate(0));
  }
  fi->keep_cache = 0;  // each open sees the frames completed before it
  handle->snapshot = node.growing->TakeSnapshot();
  fi->fh = reinterpret_cast<uintptr_t>(handle.release());  // freed in Release
  return Status::Ok();
}

void ReleaseHandle(FileHandle* raw) {
  std::unique_ptr<FileHandle> handle(raw);
  if (handle->writer) handle->growing->EndWrite(&handle->session);
}

void Open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Mount& m = MountOf(req);
  std::optional<NodeInfo> node = m.table->Get(ino);
  if (!node) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  switch (node->kind) {
    case NodeKind::kDirectory:
      fuse_reply_err(req, EISDIR);
      return;
    case NodeKind::kArchived:
      OpenArchived(req, m, *node, fi);
      return;
    case NodeKind::kGrowing: {
      Status s = MakeGrowingHandle(*node, fi);
      if (!s.ok()) {
        if (s.code() == EBUSY) {
          fuse_reply_err(req, EBUSY);  // an expected answer, not worth a log line each time
        } else {
          ReplyError(req, "open", s);
        }
        return;
      }
      if (fuse_reply_open(req, fi) != 0) ReleaseHandle(HandleOf(fi));
      return;
    }
  }
}

// Per-thread buffer for replies that need a copy (deflated and growing members). Bounded by
// the largest request, one per loop thread.
std::span<std::byte> ReadBuffer(size_t size) {
  thread_local std::vector<std::byte> buffer;
  if (buffer.size() < size) buffer.resize(size);
  return std::span<std::byte>(buffer.data(), size);
}

void Read(fuse_req_t req, fuse_ino_t /*ino*/, size_t size, off_t off, fuse_file_info* fi) {
  Mount& m = MountOf(req);
  FileHandle* h = HandleOf(fi);
  size = std::min<size_t>(size, kMaxRequestBytes);
  if (h->reader != nullptr) {
    uint64_t member_size = h->reader->size();
    uint64_t offset = static_cast<uint64_t>(off);
    if (offset >= member_size) {
      fuse_reply_buf(req, nullptr, 0);
      return;
    }
    size = static_cast<size_t>(std::min<uint64_t>(size, member_size - offset));
    if (std::optional<uint64_t> data_offset = h->reader->stored_data_offset()) {
      // Stored: zero-copy splice from the archive file.
      // FUSE_BUFVEC_INIT is a compound literal, which ISO C++ rejects (-Wpedantic).
      fuse_bufvec buf{};
      buf.count = 1;
      buf.buf[0].size = size;
      buf.buf[0].flags = static_cast<fuse_buf_flags>(FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK);
      buf.buf[0].fd = m.archive->fd();
      buf.buf[0].pos = static_cast<off_t>(*data_offset + offset);
      fuse_reply_data(req, &buf, FUSE_BUF_SPLICE_MOVE);
      return;
    }
    std::span<std::byte> dest = ReadBuffer(size);
    Result<size_t> n = h->reader->ReadAt(offset, dest);
    if (!n.ok()) {
      ReplyError(req, "read", n.status());  // core names the archive, member and cause
      return;
    }
    fuse_reply_buf(req, reinterpret_cast<const char*>(dest.data()), *n);
    return;
  }
  std::span<std::byte> dest = ReadBuffer(size);
  // A writer reading back sees its own progress; a reader keeps its open-time header.
  Result<size_t> n = h->writer ? h->growing->ReadAt(static_cast<uint64_t>(off), dest)
                               : h->growing->ReadAt(h->snapshot, static_cast<uint64_t>(off), dest);
  if (!n.ok()) {
    ReplyError(req, "read", n.status());
    return;
  }
  fuse_reply_buf(req, reinterpret_cast<const char*>(dest.data()), *n);
}

void Write(fuse_req_t req, fuse_ino_t ino, const char* data, size_t size, off_t off,
           fuse_file_info* fi) {
  FileHandle* h = HandleOf(fi);
  if (!h->writer) {
    fuse_reply_err(req, EBADF);
    return;
  }
  Result<size_t> n =
      h->growing->Write(&h->session, static_cast<uint64_t>(off),
                        std::span<const std::byte>(reinterpret_cast<const std::byte*>(data), size));
  if (!n.ok()) {
    ReplyError(req, "write", n.status());
    return;
  }
  MountOf(req).table->Touch(ino, Now());  // ls -l shows when the member last grew
  fuse_reply_write(req, *n);
}

void Flush(fuse_req_t req, fuse_ino_t /*ino*/, fuse_file_info* /*fi*/) { fuse_reply_err(req, 0); }

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
  bool archived = HandleOf(fi)->reader != nullptr;
  ReleaseHandle(HandleOf(fi));
  fuse_reply_err(req, 0);  // reply first: the save below must not delay close()
  if (archived) MaybeSaveIndex(m);
}

void Fsync(fuse_req_t req, fuse_ino_t /*ino*/, int /*datasync*/, fuse_file_info* fi) {
  FileHandle* h = HandleOf(fi);
  if (h->growing == nullptr) {
    fuse_reply_err(req, 0);  // archived members are already on disk
    return;
  }
  Status s = h->growing->Fsync();
  if (!s.ok()) {
    ReplyError(req, "fsync", s);
    return;
  }
  fuse_reply_err(req, 0);
}

// ---- creating and removing names ----

// The frame layout a new member gets from -o frame=, if any pattern matches.
Result<std::optional<NpyHeader>> DeclaredLayout(const Mount& m, const std::string& path) {
  if (!IsNpyMemberName(path)) return std::optional<NpyHeader>();
  const FramePattern* p = MatchFramePattern(m.options.frames, path);
  if (p == nullptr) return std::optional<NpyHeader>();
  auto header = NpyHeader::ForFrames(p->descr, p->shape, /*fortran_order=*/false, 0);
  if (!header.ok()) {
    return header.status().WithContext(path + ": -o frame=" + p->pattern);
  }
  return std::optional<NpyHeader>(std::move(header).value());
}

// Creates a new growing member `name` in `parent`. EEXIST for an archived member's name.
Result<NodeInfo> CreateMember(Mount& m, fuse_ino_t parent, const std::string& name) {
  if (!Writable(m)) return Status::Error(EROFS, name + ": read-only mount");
  if (m.table->Lookup(parent, name, /*count=*/false)) {
    return Status::Error(EEXIST, name + ": exists");
  }
  NPZ_ASSIGN_OR_RETURN(std::string path, m.table->ChildPath(parent, name));
  NPZ_ASSIGN_OR_RETURN(std::optional<NpyHeader> declared, DeclaredLayout(m, path));
  NPZ_ASSIGN_OR_RETURN(std::shared_ptr<GrowingMember> member, m.spool->Create(path, declared));
  auto node = m.table->AddChild(parent, name, NodeKind::kGrowing, member, Now());
  if (!node.ok()) {
    // Lost a race with another create of the same name: undo ours.
    Status undo = m.spool->Remove(path);
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
    if (node.status().code() == EEXIST || node.status().code() == EROFS) {
      fuse_reply_err(req, node.status().code());
    } else {
      ReplyError(req, "create", node.status());
    }
    return;
  }
  Status s = MakeGrowingHandle(*node, fi);
  if (!s.ok()) {
    // The name exists now (the reply below is an error, so the kernel does not count it).
    m.table->Forget(node->ino, 1);
    ReplyError(req, "create", s);
    return;
  }
  fuse_entry_param e = EntryOf(m, *node);
  if (fuse_reply_create(req, &e, fi) != 0) ReleaseHandle(HandleOf(fi));
}

void MkNod(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, dev_t /*rdev*/) {
  Mount& m = MountOf(req);
  if (!S_ISREG(mode)) {
    fuse_reply_err(req, EPERM);  // only regular files can become members
    return;
  }
  auto node = CreateMember(m, parent, name);
  if (!node.ok()) {
    fuse_reply_err(req, node.status().code());
    return;
  }
  fuse_entry_param e = EntryOf(m, *node);
  fuse_reply_entry(req, &e);
}

void MkDir(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t /*mode*/) {
  Mount& m = MountOf(req);
  if (!Writable(m)) {
    fuse_reply_err(req, EROFS);
    return;
  }
  auto node = m.table->AddChild(parent, name, NodeKind::kDirectory, nullptr, Now());
  if (!node.ok()) {
    fuse_reply_err(req, node.status().code());
    return;
  }
  fuse_entry_param e = EntryOf(m, *node);
  fuse_reply_entry(req, &e);
}

void Unlink(fuse_req_t req, fuse_ino_t parent, const char* name) {
  Mount& m = MountOf(req);
  std::optional<NodeInfo> node = m.table->Lookup(parent, name, /*count=*/false);
  if (!node) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  if (node->kind == NodeKind::kDirectory) {
    fuse_reply_err(req, EISDIR);
    return;
  }
  if (node->kind == NodeKind::kArchived) {
    LogWarning("unlink " + node->path + ": archived members cannot be removed");
    fuse_reply_err(req, Writable(m) ? EPERM : EROFS);
    return;
  }
  Status s = m.spool->Remove(node->path);  // EPERM once the member holds data
  if (!s.ok()) {
    ReplyError(req, "unlink", s);
    return;
  }
  s = m.table->Detach(parent, name);
  fuse_reply_err(req, s.code());
}

void RmDir(fuse_req_t req, fuse_ino_t parent, const char* name) {
  Mount& m = MountOf(req);
  if (!Writable(m)) {
    fuse_reply_err(req, EROFS);
    return;
  }
  std::optional<NodeInfo> node = m.table->Lookup(parent, name, /*count=*/false);
  if (!node) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  if (node->kind != NodeKind::kDirectory) {
    fuse_reply_err(req, ENOTDIR);
    return;
  }
  // Directories holding archived members are never empty; an empty one was made by mkdir.
  fuse_reply_err(req, m.table->Detach(parent, name).code());
}

void Rename(fuse_req_t req, fuse_ino_t parent, const char* name, fuse_ino_t new_parent,
            const char* new_name, unsigned int flags) {
  Mount& m = MountOf(req);
  if (!Writable(m)) {
    fuse_reply_err(req, EROFS);
    return;
  }
  if (flags != 0) {
    fuse_reply_err(req, EINVAL);  // RENAME_EXCHANGE / RENAME_NOREPLACE are not offered
    return;
  }
  std::optional<NodeInfo> node = m.table->Lookup(parent, name, /*count=*/false);
  if (!node) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  if (node->kind != NodeKind::kGrowing) {
    LogWarning("rename " + node->path + ": only new, empty members can be renamed");
    fuse_reply_err(req, EPERM);
    return;
  }
  if (m.table->Lookup(new_parent, new_name, /*count=*/false)) {
    fuse_reply_err(req, EEXIST);  // replacing a member would drop its data
    return;
  }
  auto new_path = m.table->ChildPath(new_parent, new_name);
  if (!new_path.ok()) {
    fuse_reply_err(req, new_path.status().code());
    return;
  }
  Status s = m.spool->Rename(node->path, *new_path);  // EPERM once the member holds data
  if (!s.ok()) {
    ReplyError(req, "rename", s);
    return;
  }
  fuse_reply_err(req, m.table->Move(parent, name, new_parent, new_name).code());
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

void SetXattr(fuse_req_t req, fuse_ino_t ino, const char* name, const char* value, size_t size,
              int /*flags*/) {
  Mount& m = MountOf(req);
  std::optional<NodeInfo> node = m.table->Get(ino);
  if (!node) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  if (node->kind != NodeKind::kGrowing) {
    fuse_reply_err(req, Writable(m) ? ENOTSUP : EROFS);
    return;
  }
  Status s = node->growing->SetAttribute(name, std::string_view(value, size));
  if (!s.ok()) {
    ReplyError(req, "setxattr", s);
    return;
  }
  fuse_reply_err(req, 0);
}

void GetXattr(fuse_req_t req, fuse_ino_t ino, const char* name, size_t size) {
  Mount& m = MountOf(req);
  std::optional<NodeInfo> node = m.table->Get(ino);
  if (!node) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  if (ino == FUSE_ROOT_ID) {
    // The `npz umount` protocol: who to wait for, and where the outcome will be.
    if (std::strcmp(name, kPidAttribute) == 0) {
      ReplyXattrValue(req, std::to_string(getpid()), size);
    } else if (std::strcmp(name, kResultAttribute) == 0) {
      ReplyXattrValue(req, m.result_path, size);
    } else {
      fuse_reply_err(req, ENODATA);
    }
    return;
  }
  if (node->kind != NodeKind::kGrowing) {
    fuse_reply_err(req, ENODATA);
    return;
  }
  auto value = node->growing->GetAttribute(name);
  if (!value.ok()) {
    fuse_reply_err(req, value.status().code());  // ENODATA: an expected answer
    return;
  }
  ReplyXattrValue(req, *value, size);
}

void ListXattr(fuse_req_t req, fuse_ino_t ino, size_t size) {
  Mount& m = MountOf(req);
  std::optional<NodeInfo> node = m.table->Get(ino);
  if (!node) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  std::vector<std::string> names;
  if (ino == FUSE_ROOT_ID) {
    names = {kPidAttribute, kResultAttribute};
  } else if (node->kind == NodeKind::kGrowing) {
    names = node->growing->ListAttributes();
  }
  std::string list;
  for (const std::string& n : names) list += n + '\0';
  ReplyXattrValue(req, list, size);
}

void RemoveXattr(fuse_req_t req, fuse_ino_t /*ino*/, const char* /*name*/) {
  fuse_reply_err(req, MountOf(req).spool != nullptr ? EPERM : EROFS);
}

// ---- statfs ----

void StatFs(fuse_req_t req, fuse_ino_t /*ino*/) {
  Mount& m = MountOf(req);
  // Numbers of the filesystem that holds the archive (and the spool): what is free there is
  // what new members can use.
  struct statvfs st {};
  std::string where = m.spool != nullptr ? m.spool->dir() : DirName(m.archive_path);
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
  if (m.spool == nullptr) {
    st.f_bfree = 0;
    st.f_bavail = 0;
  }
  st.f_blocks = used_blocks + st.f_bfree;
  st.f_files = m.table->size() + (m.spool != nullptr ? st.f_ffree : 0);
  if (m.spool == nullptr) st.f_ffree = st.f_favail = 0;
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
