// A stored member's shared state: its bytes sit unchanged in the archive, so reading is a
// pread (or a splice of the archive's own pages), and the only work is checking them.
//
// The problem. A stored member's CRC-32 covers every byte, so no byte can be checked before
// the whole member was read once. Serving pread results unchecked lets a flipped byte, a
// wrong CRC in the directory or an archive truncated under a live mount through with rc=0.
//
// The design.
//   - The verify pass: the first read of a member with no verified record starts a pass over
//     the whole member in the background (the VerifyPool, in steps of kStepChunks chunks that
//     re-queue themselves). It records the CRC-32 of every chunk of kChunkBytes and checks
//     their combination against the directory's CRC-32. A good pass leaves a verified record
//     (the chunk CRCs) for the sidecar; a bad one makes every later read EIO, with one log
//     line.
//   - Before the pass has finished, reads are served unchecked (spliced like checked ones:
//     a copy would be no safer, and a first `cat` ran at 1.6x the splice time copying), and
//     a read that reaches the end of the member waits for the pass, so a sequential reader
//     never sees a clean end of a bad member (as Python's zipfile raises at the end).
//   - After the pass, or with a verified record from the sidecar, every chunk is checked the
//     first time this process touches it (pread, CRC-32, compare); checked chunks are then
//     answered with a splice from the archive, zero-copy. A chunk is checked once: the
//     thread that claims it checks it, and any other reader of it waits for that verdict.
//   - Check-ahead: once a reader streams (SequentialRun: 4 MiB read in order), the next
//     kCheckAheadChunks chunks are checked on the VerifyPool before it gets there, so a
//     sequential reader of a fresh mount finds its chunks checked and the CRC work runs on
//     another core (a first `cat` with the checks on its path ran at 1.4x the unchecked
//     splice time). Random readers get no check-ahead: it would be wasted work. A chunk
//     that does not match the sidecar's CRC is left unchecked for the reader to find, so
//     that distrusting a record always happens on a reader's path (which waits for the new
//     pass; the one-thread VerifyPool cannot wait for a pass it would have to run).
//   - A mismatch against chunk CRCs that came from the sidecar first distrusts the sidecar:
//     the record is dropped and a new pass decides. Only if the data itself is bad is it EIO.
//     Until then, readers of the chunk that mismatched wait for that pass too.
//     A read error during a pass is not a verdict: the readers waiting for that pass get
//     the error, and the next read resumes the pass (a recovery that put the archive back,
//     or a passing I/O error, leaves the member readable).
//   - VerifyMode::kStrict serves nothing before the pass has finished; kOff splices every
//     read unchecked.
//   - A change of the archive that ArchiveShared accepts (its ctime alone: a writer that kept
//     the size and put the mtime back; an append) starts a new change epoch. Every chunk is
//     then unchecked again and checked against the recorded CRC-32s on its next touch, and
//     a pass that ran across the change leaves its chunks unchecked.
//
// Chunk size: 1 MiB. The record costs 4 bytes per MiB (0.0004% of the member); a first
// touch reads at most one chunk more than the request (FUSE requests are at most 1 MiB, so
// at most two chunks).
//
// Threads: every method is safe from many threads. mu_ guards the pass state; it is never
// held during I/O or CRC work. Lock order: mu_ is a leaf.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "core/read/archive_shared.h"
#include "core/read/index_file.h"
#include "npzfs/member_reader.h"
#include "npzfs/status.h"
#include "npzfs/zip_directory.h"

namespace npzfs {

class StoredMember : public std::enable_shared_from_this<StoredMember> {
 public:
  static constexpr uint32_t kChunkBytes = kStoredChunkBytes;
  static constexpr size_t kStepChunks = 8;          // chunks per VerifyPool task
  static constexpr uint64_t kCheckAheadChunks = 8;  // check-ahead (see the essay)

  StoredMember(std::shared_ptr<ArchiveShared> shared, std::string member_path,
               const ZipEntry& entry);

  uint64_t size() const { return entry_.uncompressed_size; }
  const std::string& name() const { return name_; }  // "archive.npz: member a.npy"

  // Answers a read of up to dest.size() bytes at `offset` (see MemberReader::Read): a splice
  // answer when `may_splice`, else the bytes copied into `dest`. Errors (EIO, naming the
  // archive and the member): a CRC-32 mismatch (now or earlier), the archive changed or is
  // shorter than the member, a failed pread.
  Result<ReadAnswer> Read(uint64_t offset, std::span<std::byte> dest, bool may_splice);

  // Runs the verify pass now if it has not run (or was cancelled) and waits for its verdict.
  Status Verify();
  bool verified() const;   // a pass succeeded, or a verified record was loaded
  Status failure() const;  // non-ok once the member is known bad

  // Sidecar support: the chunk CRCs of a verified member, and the version they belong to.
  struct Record {
    std::vector<uint32_t> chunk_crcs;
    uint64_t version = 0;
  };
  std::optional<Record> TakeRecord() const;  // nullopt unless verified
  // Installs a verified record (already checked: one CRC per chunk, combining to the
  // entry's CRC-32).
  void Load(std::vector<uint32_t> chunk_crcs);
  bool dirty() const;
  void MarkSaved(uint64_t version);

  // Stops a running pass after its current step and waits for that step; a later read that
  // needs the pass resumes it where it stopped. Called when the Archive goes away.
  void Cancel();

  // Bytes read to compute CRC-32s so far, by passes and first-touch checks (a test hook).
  uint64_t check_bytes() const { return check_bytes_.load(); }

  static uint64_t ChunkCount(uint64_t size) { return (size + kChunkBytes - 1) / kChunkBytes; }

 private:
  enum class Pass { kNotStarted, kRunning, kDone, kFailed };

  Status StartPass();  // the failure so far, if any; else makes sure a pass runs
  Status WaitForPass();
  static void Step(std::weak_ptr<StoredMember> weak);
  void RunStep();
  // Checks chunks [first, last] that this process has not checked yet.
  Status CheckChunks(uint64_t first, uint64_t last);
  // One chunk: claims and checks it, or (if `wait`) waits for the thread that claimed it.
  enum class Check {
    kDone,      // the chunk is checked and matched
    kBusy,      // another thread is checking it (only when !wait)
    kMismatch,  // it does not match the sidecar's CRC (it stays unchecked)
    kRetry,     // the expected CRCs changed meanwhile (a distrusted record): decide again
  };
  Result<Check> CheckChunk(uint64_t chunk, bool wait);
  // After a read of [offset, offset + n) whose last chunk is `last`: check-ahead for a
  // sequential reader.
  void CheckAhead(uint64_t offset, size_t n, uint64_t last);
  static void AheadTask(std::weak_ptr<StoredMember> weak, uint64_t first, uint64_t end);
  Result<uint32_t> ChunkCrc(uint64_t chunk);
  Status Fail(const std::string& why);  // marks the member bad, logs, returns EIO
  // The archive's change epoch moved to `epoch`: every chunk is checked again.
  void ForgetChecks(uint64_t epoch);
  // Drops a sidecar record after chunk `c` mismatched it; a new pass will decide.
  void Distrust(uint64_t c);

  const std::shared_ptr<ArchiveShared> shared_;
  const ZipEntry entry_;
  const std::string name_;
  const uint64_t chunks_;

  mutable std::mutex mu_;
  std::condition_variable pass_cv_;  // signalled when a step ends and when the pass ends
  Pass pass_ = Pass::kNotStarted;
  std::vector<uint32_t> crcs_;  // chunk CRCs: the first next_chunk_ while running; all after
  uint64_t next_chunk_ = 0;     // the running pass's position
  uint32_t running_crc_ = 0;    // CRC-32 of chunks [0, next_chunk_)
  bool from_sidecar_ = false;   // crcs_ came from the sidecar, not from this process
  bool cancel_ = false;
  bool step_running_ = false;
  Status failed_;  // non-ok once the member is known bad (a CRC-32 mismatch of the data)
  // A read error (or an archive found changed) stops the pass without judging the member:
  // the pass goes back to kNotStarted, resumable from next_chunk_, and the readers waiting
  // for that attempt (pass_attempt_ when they started waiting == error_attempt_) get
  // pass_error_. The next StartPass tries again.
  Status pass_error_;
  uint64_t pass_attempt_ = 0;
  uint64_t error_attempt_ = 0;
  // The chunk that failed its check against a distrusted record (kNoChunk: none). Either the
  // record or these bytes are wrong: readers of it wait for the new pass, even in the
  // default mode, instead of being served bytes known to be suspect.
  static constexpr uint64_t kNoChunk = ~uint64_t{0};
  std::atomic<uint64_t> suspect_chunk_{kNoChunk};
  uint64_t version_ = 0;
  uint64_t saved_version_ = 0;
  // Per chunk, a ChunkState: whether this process has checked it. Leaving kChecking happens
  // under mu_, with check_cv_ notified.
  enum ChunkState : uint8_t { kUnchecked, kChecking, kChecked };
  std::unique_ptr<std::atomic<uint8_t>[]> state_;
  std::condition_variable check_cv_;
  uint64_t generation_ = 0;              // counts distrusted records and forgotten checks
  std::atomic<uint64_t> seen_epoch_{0};  // the archive's change epoch the checks are for
  uint64_t pass_epoch_ = 0;              // the change epoch when the pass read its chunk 0
  SequentialRun sequential_;
  std::atomic<uint64_t> ahead_end_{0};  // chunks below this were handed to check-ahead
  std::atomic<uint64_t> check_bytes_{0};
};

// A reader handle of a stored member.
std::shared_ptr<MemberReader> MakeStoredReader(std::shared_ptr<StoredMember> member);

}  // namespace npzfs
