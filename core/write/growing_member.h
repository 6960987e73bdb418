// One new member being recorded into the mount: an append-only, growing file backed by a
// spool file on disk.
//
// Two kinds, chosen by name: a name ending in ".npy" is frame-structured (its bytes form a
// .npy whose header always counts the complete frames); any other name is kept verbatim as
// append-only bytes. A .npy whose writer's header describes an array that cannot grow frame
// by frame (a 0-d array, frames of zero bytes, an object array) becomes verbatim too, unless
// a layout was declared (then EINVAL).
//
// The spool file of a .npy member is a valid .npy at all times: the canonical header
// (NpyHeader::Format(), numpy 1.24 layout, its length fixed for life) followed by every data
// byte received, including a trailing partial frame. The count in the header is rewritten
// only after the data it counts has been written. Before the layout is known the spool file
// is empty. Because the spool file has exactly the layout readers see, a visible offset is
// also the spool-file offset of the same byte.
//
// A count rewrite that fails (EIO; ENOSPC on a copy-on-write filesystem) comes after the
// frames were written and published to readers and finalize, which take the header from
// memory: the write still succeeds (a writer retrying it would get EPERM for rewriting its own
// data). The header on disk then counts fewer frames than follow it (still a valid .npy, and
// Resume counts frames from the file size, not from the header); the failure is logged and the
// rewrite retried at the next write, Fsync, EndWrite and PrepareFinalize. Fsync reports it
// while the header cannot be written, so a writer that asks for durability learns it.
//
// Layout changes: the layout can change only while the member holds no data (a Truncate(0)
// that forgets a header-first layout followed by another header, new layout attributes, a
// rename to another kind and back). Each change starts a new layout generation. A reader
// handle opened before it follows the new layout completely: its reads show the current
// header (with the current count) and the current data, exactly as a handle opened before
// the layout was known does; never the old header (old dtype or shape) over the new data.
//
// Identity: a GrowingMember IS the member for its whole life. A rename (Spool::Rename) moves
// its spool file and changes its name in place, so every holder (the daemon's inode table, an
// open writer or reader handle) keeps pointing at the same object, with its layout, its
// attributes and its writer session.
//
// Ownership: the Spool (core/write/spool.h) creates members and owns them through shared_ptr;
// the FUSE daemon keeps shared_ptrs for its inode table, one MemberReader per open file
// (OpenReader) and one WriterSession per writer handle. A GrowingMember owns its spool-file
// descriptor; a reader holds the member, so a splice answer's fd stays open while it lives.
//
// Thread safety: every public method is safe to call from any thread. A short state mutex is
// never held across disk I/O except the single pwrite of a header rewrite; readers (ReadAt,
// visible_size) wait for a writer's data I/O only for a write acknowledged before it (see
// Write), never for Fsync. Writers, Fsync, Truncate and finalize are serialised among
// themselves by a second mutex.
//
// Error codes (Status::code()) are the errno the daemon replies:
//   EPERM  an overwrite, a truncate or an unlink/rename of data already written, a layout
//          change after data was written;
//   EBUSY  a second simultaneous writer;
//   EINVAL a .npy written without a known layout, a header that does not parse or does not
//          match the declared layout, a declared layout that cannot grow (object dtype, 0-d);
//   ENODATA/ENOTSUP for unknown attributes; EIO/ENOSPC/... from the spool file.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/base/names.h"
#include "core/npy/frame_layout.h"
#include "npzfs/file_util.h"
#include "npzfs/member_reader.h"
#include "npzfs/npy_header.h"
#include "npzfs/status.h"

namespace npzfs {

// Receives one human-readable log line (no trailing newline). May be empty.
using SpoolLogFn = std::function<void(const std::string& line)>;

// Writes `header` at offset 0 of the spool file `fd` (named `path` in errors), over a header
// of the same length: the rewrite of a .npy member's frame count. Empty: PwriteAll. A seam for
// tests, which make the rewrite fail. Called with the member's writer lock held, never its
// state lock, so readers do not wait for it.
using HeaderWriteFn =
    std::function<Status(int fd, const std::string& header, const std::string& path)>;

// One writer handle on a growing member (one per open file description that may write).
// Owned by the daemon; filled in by GrowingMember::BeginWrite. The member keeps the writer's
// position itself, so this is only a token, the O_APPEND flag and the error of a lost write.
struct WriterSession {
  uint64_t token = 0;   // 0: not writing (never began or ended)
  bool append = false;  // opened with O_APPEND: every write appends, whatever its offset
  // A write that was acknowledged early (Write's `accepted`) and then failed in the spool
  // file: every later Write, Fsync and WriterStatus of this session returns it. Guarded by
  // the member's writer lock.
  Status lost_write = Status::Ok();
};

// Called by GrowingMember::Write with the byte count once the write is placed and only the
// spool file's own I/O can still fail it: the caller may acknowledge the write then, so that
// the writer prepares its next write while this one is written (see Write).
using WriteAcceptedFn = std::function<void(size_t bytes)>;

// The view a reader handle got at open (GrowingMember::TakeSnapshot).
struct ReaderSnapshot {
  std::string header;  // canonical header with the count at snapshot time ("": none yet)
  uint64_t size = 0;   // visible size at snapshot time
  uint64_t layout_generation = 0;  // the layout `header` belongs to (see "Layout changes")
};

// What finalize needs from one member: the bytes of the final member as pieces.
struct FinalizedMemberData {
  std::string name;
  std::string header;             // canonical header with the final count ("" for verbatim members)
  int fd = -1;                    // spool file (owned by the member; valid while it lives)
  uint64_t data_offset = 0;       // first data byte in the spool file
  uint64_t data_length = 0;       // complete frames only (verbatim: the whole file)
  std::optional<uint32_t> crc32;  // CRC-32 of header + data if known without a re-read
  uint64_t dropped_partial_bytes = 0;  // trailing partial frame left out
  bool has_layout = true;              // false: a .npy that never received a header or a layout
};

// What a MemberReader opened on a growing member shows (GrowingMember::OpenReader).
enum class GrowingView {
  kSnapshot,  // a reader handle: the header keeps the count it had at open (TakeSnapshot)
  kLive,      // a writer reading back: every read shows the member as it is now
};

class GrowingMember : public std::enable_shared_from_this<GrowingMember> {
 public:
  // Creates an empty member whose spool file is `spool_path` (must not exist: EEXIST).
  // `declared` (count ignored) fixes the layout now, as -o frame= does; then the spool file
  // gets a header with count 0 at once. Only for .npy names (EINVAL otherwise).
  // `write_header` rewrites the count (empty: PwriteAll; see HeaderWriteFn).
  static Result<std::shared_ptr<GrowingMember>> Create(std::string name, std::string spool_path,
                                                       std::optional<NpyHeader> declared,
                                                       SpoolLogFn log = {},
                                                       HeaderWriteFn write_header = {});
  // Reopens a spool file left by a previous daemon (e.g. after SIGKILL): keeps every complete
  // frame (count from the file size, not from the header), truncates a partial tail (logged)
  // and rewrites the header. EINVAL if the file is not a .npy this module wrote.
  static Result<std::shared_ptr<GrowingMember>> Resume(std::string name, std::string spool_path,
                                                       SpoolLogFn log = {},
                                                       HeaderWriteFn write_header = {});

  GrowingMember(const GrowingMember&) = delete;
  GrowingMember& operator=(const GrowingMember&) = delete;
  ~GrowingMember();

  // The member's current name and spool file (both change on a rename: copies).
  std::string name() const;
  std::string spool_path() const;
  // The spool file's descriptor: owned by the member and open for its whole life (renames
  // keep it). For the background deflater, which fdatasyncs it.
  int spool_fd() const { return fd_.get(); }
  bool is_npy() const;  // IsNpyName(name()): frame-structured

  // ---- writers ----
  // Starts a writer session. `append` is O_APPEND. If another session is active, waits up
  // to `wait_for_release` for it to end, then EBUSY: the kernel sends a FUSE release after
  // close() has returned, so a writer that closes and reopens at once may find its own
  // previous session still open for a moment. (0 for a single-threaded daemon, where the
  // release could not be handled while this waits.)
  Status BeginWrite(WriterSession* session, bool append,
                    std::chrono::milliseconds wait_for_release = std::chrono::milliseconds(0));
  // Ends it (idempotent). A header-first writer that stops in the middle of its header loses
  // those header bytes (logged); the member is then as before its first write. Retries a
  // failed count rewrite (logged if it fails again).
  void EndWrite(WriterSession* session);
  // Writes `data` at `offset` of the session's byte stream. Returns data.size() on success.
  // The first writer of a header-first member writes in its own coordinates (its header,
  // then data); every later writer writes in visible coordinates (or, on a member whose
  // layout did not come from a writer's header, in raw ones from its first write at
  // data_bytes()); a write at the end in visible coordinates always appends. See the rules
  // in growing_member.cc. EBADF if the session is not the active one. A failed rewrite of the
  // header's count does not fail it (see the top of this file).
  //
  // Early acknowledgement: for a write of data bytes (not of a writer's header), `accepted`
  // (if set) is called once every check has passed, just before the pwrite into the spool
  // file, with this member's writer lock held. A FUSE daemon replies to the kernel there, so
  // the writer's next write travels while this one is written (a dd of 1 GiB through the
  // mount: 0.9x a dd to a plain file, against 0.6x replying after the pwrite). The next Write,
  // Fsync, Truncate, EndWrite and finalize wait for this one (writer lock), and so do readers
  // (visible_size, TakeSnapshot, Read, frame_count, data_bytes) and CheckRemovable: a reader
  // that comes after the writer's write() returned sees its frames (it waits only for writes
  // acknowledged before it came). If the pwrite then fails (ENOSPC, EIO, EDQUOT, EFBIG),
  // Write returns the error and records it in the session (lost_write): the writer learns it
  // from its next write, fsync or close, as it would from a page-cache writeback error. A
  // daemon killed between the two loses that one acknowledged write; fsynced frames are
  // never lost.
  Result<size_t> Write(WriterSession* session, uint64_t offset, std::span<const std::byte> data,
                       const WriteAcceptedFn& accepted = {});
  // The session's lost write (Ok if none), after any write in progress: what close() of the
  // writer's file reports (a FUSE flush).
  Status WriterStatus(const WriterSession* session) const;
  // fsyncs the spool file and (first time) its directory: every frame written so far
  // survives a crash. First retries a failed count rewrite: if the header on disk still
  // cannot count every frame, the spool file is fsynced all the same (Resume would keep the
  // frames) and that error is returned. With a `session` that lost a write (see Write), the
  // spool file is fsynced and that session's error returned.
  Status Fsync(const WriterSession* session = nullptr);
  // ftruncate(2)/O_TRUNC: to the current size (visible or including a held-back partial
  // frame) is a no-op; to 0 on a member with no data resets it (a header-first layout is
  // forgotten, a declared one kept); anything else EPERM.
  Status Truncate(uint64_t size);
  // unlink/rename: ok only while no data byte was written (EPERM otherwise).
  Status CheckRemovable() const;
  // Marks the member removed (its spool file is unlinked by the caller); later writes fail.
  void MarkRemoved();
  // Renames the member in place: the spool file moves to `new_spool_path` (rename(2)) and
  // name() becomes `new_name`; layout, attributes and an open writer session are kept. A
  // rename between a .npy and another name changes the member's kind: it starts empty (a
  // declared header is not data of a verbatim file). EPERM once data was written; errno of
  // the rename(2) (the member is then unchanged).
  Status MoveTo(const std::string& new_name, const std::string& new_spool_path);

  // ---- layout attributes (user.npy.descr / user.npy.shape / user.npy.fortran_order) ----
  // Sets one attribute. When descr and shape are both set the layout is declared and the
  // spool file gets a header with count 0. EPERM once data was written with another layout
  // (setting the same value again is ok); ENOTSUP for other names or a non-.npy member;
  // EINVAL for a bad value.
  Status SetAttribute(std::string_view attr, std::string_view value);
  // ENODATA if unset and not derivable from a known layout.
  Result<std::string> GetAttribute(std::string_view attr) const;
  // Names with a value (for listxattr).
  std::vector<std::string> ListAttributes() const;

  // ---- readers ----
  // Size a reader sees now: header + complete frames (verbatim: all bytes).
  uint64_t visible_size() const;
  // What one reader handle was shown when it opened. Take it in open() and pass it to every
  // ReadAt of that handle: the header keeps the count of the snapshot, and the visible size
  // only grows, so the header never counts more frames than any size reported (stat) after
  // the open. Without it, a reader that got the size from one getattr and the header from a
  // later read could see a count its size cannot hold (cp would produce a broken .npy).
  // A snapshot of an earlier layout generation (taken before the layout was known or before
  // it changed) is not used: such a reader is shown the current header ("Layout changes").
  ReaderSnapshot TakeSnapshot() const;
  // Reads visible bytes at `offset`; returns the count (short only at the current visible
  // end). The header comes from `snapshot` (from memory), data from the spool file, up to
  // the CURRENT visible size (bytes past the snapshot are complete frames numpy ignores as
  // trailing bytes). EIO etc. from the spool file.
  Result<size_t> ReadAt(const ReaderSnapshot& snapshot, uint64_t offset,
                        std::span<std::byte> out) const;
  // Same with a snapshot taken now. Only safe for callers that take the size from this same
  // call (see TakeSnapshot).
  Result<size_t> ReadAt(uint64_t offset, std::span<std::byte> out) const;
  // Like ReadAt, but bytes of the data region are answered as a splice from the spool file
  // (visible offsets are spool-file offsets, and data below the visible size never changes);
  // a read that touches the header is copied into `out`.
  Result<ReadAnswer> Read(const ReaderSnapshot& snapshot, uint64_t offset,
                          std::span<std::byte> out) const;
  // One reader handle for an open file: a MemberReader whose size() is the current visible
  // size and whose Read/ReadAt follow `view`. It holds the member (and so the spool fd).
  std::shared_ptr<MemberReader> OpenReader(GrowingView view);

  // ---- state ----
  std::optional<NpyHeader> layout() const;  // count 0; nullopt until known
  uint64_t frame_count() const;             // complete frames
  uint64_t data_bytes() const;              // every data byte, including a partial frame
  bool has_data() const { return data_bytes() > 0; }

  // A consistent snapshot for finalize (waits for an in-flight write). Logs a dropped
  // partial frame. Its header comes from memory, never from the spool file; a failed count
  // rewrite is retried first (logged if it fails again; finalize does not need it).
  Result<FinalizedMemberData> PrepareFinalize();

 private:
  GrowingMember(std::string name, std::string spool_path, UniqueFd fd, SpoolLogFn log,
                HeaderWriteFn write_header);
  void Log(const std::string& line) const;
  struct State;
  // The steps of Write and SetAttribute (growing_member.cc says which locks each needs).
  void ChooseCoordinates(State& s, const WriterSession& session, uint64_t offset,
                         std::span<const std::byte> data) const;
  Result<bool> PlaceWrite(State& s, const WriterSession& session, uint64_t offset,
                          std::span<const std::byte> data) const;
  Result<size_t> CollectHeader(std::unique_lock<std::mutex>& lock, std::span<const std::byte> data);
  Status AdoptWriterHeader(std::unique_lock<std::mutex>& lock, const NpyHeader& parsed,
                           size_t writer_length);
  Result<size_t> KeepVerbatim(std::unique_lock<std::mutex>& lock, std::string stream,
                              const Status& why, size_t write_size);
  // Appends data bytes to the spool file and publishes newly completed frames. Requires
  // io_mu_ held and mu_ not held. Calls `accepted` (if set) right before the pwrite, and sets
  // *acknowledged then; readers who come from there wait until the frames are published or
  // the write failed (AwaitAcknowledged).
  Status AppendData(std::span<const std::byte> data, const WriteAcceptedFn& accepted = {},
                    bool* acknowledged = nullptr);
  // Waits (releasing `lock`, which holds mu_) until every write acknowledged so far is
  // published or has failed.
  void AwaitAcknowledged(std::unique_lock<std::mutex>& lock) const;
  void TrackCrc(State& s, std::span<const std::byte> data, uint64_t frames_before,
                uint64_t frames_after, uint64_t frame_bytes);
  void Preallocate(State& s, uint64_t end);
  void GiveBackPreallocation(State& s);
  Status WriteHeaderOnly(const std::string& header) const;
  // Writes the published header over the spool file's (its count, of frames already
  // written). Logs a failure and marks the header stale for a retry. Requires io_mu_, not mu_.
  Status RewriteCount();
  Status CheckRemovableLocked() const;
  Result<std::optional<NpyHeader>> LayoutFromAttributes(const State& s,
                                                        const std::optional<std::string>& descr,
                                                        const std::optional<std::string>& shape,
                                                        const std::optional<std::string>& fortran,
                                                        std::string_view attr) const;
  std::unique_ptr<State> s_;

  // Identity: written only by MoveTo with io_mu_ and mu_ both held, so reading it under
  // either lock is safe.
  std::string name_;
  std::string spool_path_;
  bool is_npy_;
  const UniqueFd fd_;
  const SpoolLogFn log_;
  const HeaderWriteFn write_header_;
  mutable std::mutex mu_;                  // guards *s_ and the identity (short critical sections)
  std::condition_variable session_ended_;  // with mu_: a writer session ended
  mutable std::condition_variable acknowledged_done_;  // with mu_: State::settled_seq moved
  mutable std::mutex io_mu_;  // serialises Write, Fsync, Truncate, SetAttribute, MoveTo, finalize
};

}  // namespace npzfs
