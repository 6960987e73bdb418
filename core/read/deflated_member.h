// The shared state of one deflated member (checkpoint index, first-pass frontier, CRC
// verdict, fast-path resume points), behind all its readers. Used by Archive
// (core/read/archive.cc); the FUSE daemon and the npz tool need only the MemberReader
// interface in npzfs/member_reader.h. Checkpoints and sparse windows: core/read/
// inflate_index.cc. Engines: core/read/inflate_engine.h.
//
// Three ways to a byte at offset `pos`:
//   1. Known span: pos is before the last checkpoint (or the index is complete). The span is
//      decoded from its checkpoint with the fast engine (ISA-L; zlib for a checkpoint inside
//      a block), its CRC-32 checked, cached. The spans one request touches are decoded side
//      by side on the DecodePool, and a reader that goes on in order gets the next span
//      decoded ahead. A reader of objects (frames through mmap: after each jump a run of
//      about the same length, SequentialRun::typical_run) gets every span up to that length
//      decoded side by side at its first request, and nothing beyond while it stays within
//      it (the span after each frame was decoded for nothing). A streaming reader gets
//      runs: kRunSpans consecutive spans claimed in the cache and decoded in order by one
//      DecodePool task, a run per pool thread and one more ahead of it (within a quarter of
//      the cache). In a run each span continues the stream the one before parked: a span
//      decoded on its own restores a stream at its checkpoint (window expanded, dictionary
//      set, input read again), which with one task per span was a few percent of the CPU
//      time of a `cat`.
//   2. First pass, synchronously: pos is in the first span and no checkpoint is known yet.
//      The reader runs the zlib first pass itself (it finds block boundaries, windows, span
//      CRCs) for that one span: a header read needs nothing more.
//   3. Fast path: pos is beyond the checkpoints. Finding checkpoints costs zlib with Z_BLOCK,
//      two extra inflates per sparse window and CRCs: ~1.7x the work of a bare ISA-L inflate.
//      So the reader does not wait for it: a fast-engine stream (DecodeStream) decodes the
//      member in fixed chunks of kFastChunk bytes, cached under their own keys, while the
//      indexer (the zlib first pass, one span per task on the IndexPool, at SCHED_IDLE)
//      learns the checkpoints behind it on the other core. The fast stream starts at the
//      best resume point before pos: a parked fast stream, the last checkpoint at a block
//      start, or a snapshot (a saved engine state, taken every kSnapshotEvery bytes the fast
//      stream passes, kept in the archive's SnapshotStore: bounded, thinned evenly, dropped
//      once checkpoints cover them). Ahead of a sequential reader, the next chunks (kFastLead for a
//      stream, one after a page-cache-sized request) are claimed in the cache and decoded in order
//      by one DecodePool task, the chain, which goes on with its own stream; readers wait
//      for claimed chunks rather than decode them. (With a task per chunk, each chunk waited
//      for a thread to wake: a sixth of a first `cat`.) The fast stream carries the CRC-32
//      of everything before it (from the span CRCs of the checkpoint it started at), so a
//      reader that reaches the end checks the member's CRC-32 (EIO on a mismatch).
//   4. Far reads on two cores (fast_path.cc, SkipFar): a fast stream that must decode at
//      least ArchiveOptions::speculate_bytes (32 MiB) to reach pos would leave the other core
//      to the SCHED_IDLE indexer while the reader waits (np.load of a frame at 60% of a
//      fresh 1 GiB member: 1.7 s). So a DecodePool task, the helper, takes the second half:
//      at the compressed offset halfway to pos (guessed from the member's average ratio) it
//      looks for a block start and a known window from the compressed bytes alone
//      (core/read/block_finder.h), then decodes on from there with the fast engine, taking
//      snapshots at offsets relative to that block. The reader decodes up to that block and
//      must stop there between two blocks (DecodeStream::StopBefore/StopsAt): that proves
//      the guess, and gives the block's real offset. It decodes on to the helper's resume
//      point, where it must again stop between two blocks, its last 32 KiB the helper's
//      window (so a fault of the helper's own decoder is caught too), and has the CRC-32
//      there. Only then do the helper's snapshots and stream get real offsets and CRCs
//      (joined with Crc32Combine) and serve anything. A wrong guess, a helper that finds
//      nothing or answers late (the reader waits at most a second for its search before
//      passing the place it searches; the search takes a few ms), or bad data: the reader
//      goes on alone, as before. Measured: 640 MiB in 1.02 s against 1.65 s.
//      Only with ISA-L (zlib cannot tell where between blocks it stopped without Z_BLOCK)
//      and two or more CPUs.
// Rejected: caching fast-path output under span keys (the spans are not known yet, and
// re-keying a chunk once they are costs a copy); ISA-L alone (it cannot stop at block ends:
// finding boundaries with it means 8-byte inputs, 29 MB/s); the reader running the zlib
// first pass itself (0.6-0.8x zlib's bare speed, measured before this design).
//
// Seekable members (deflated by npzfs in independent chunks, with a seek table in the central
// directory, core/zip/seek_table.h): the chunk starts are the checkpoints (byte-aligned, no
// window) and the chunk CRCs the span CRCs, so the index is complete from the first read:
// no first pass, no sidecar record, random access and parallel decode at once. A chunk is
// decoded from its own compressed bytes alone and must end exactly with them: on a byte-
// aligned block boundary, or at the stream's end for the last (DecodeStream::FinishChunk).
// Decoded past its end, a chunk whose table offset lies could show bytes that the stream
// holds elsewhere. With that rule, chunks decoded in order from the member's start give what
// any inflater gives; a chunk decoded alone trusts that the chunks before it end where the
// table says, which damage cannot fake but a forger can (CRC-32 is linear): `npz verify`
// reads every chunk in order and catches it.
//
// Saved checkpoints are distrusted on failure: a span that fails against checkpoints from
// the sidecar or a seek table (CRC, window, deflate data) drops them all (generation
// changes, so nothing cached under the old ones is found again) and a first pass rebuilds
// them; only if the data itself is bad is the member corrupt (EIO for every later read).
// Until that pass has reached the end and checked the member's CRC-32, no read of the member
// is answered (distrusted_): the failed span says that the checkpoints or the data are bad,
// and the fast path, which serves ahead of the pass, would serve the damaged bytes if it is
// the data. A damaged seek table thus costs a first pass, never a wrong byte (a forged one:
// see above).
//
// Locks (in this order; never the other way round):
//   frontier_mu_  held by the one thread extending the first pass, *while inflating*: the
//                 first pass is sequential by nature.
//   index_mu_     guards checkpoints_, prefix_crcs_, complete_, corrupt_, generation_,
//                 from_saved_, seekable_ and versions; held only for short copies, never while
//                 inflating or doing I/O.
//   indexer_mu_   guards the indexer's run state; a leaf, never held while calling out.
//   chain_mu_     guards the chain's claims; held while claiming in the SpanCache, never
//                 while decoding.
//   run_mu_       guards the runs' claims, the same way (never with chain_mu_).
//   SpanCache, SnapshotStore and StreamPool locks are leaves taken by their own methods.
// Decoding a known span or a fast chunk holds no lock at all while inflating.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "core/read/archive_shared.h"
#include "core/read/decode_stream.h"
#include "core/read/inflate_index.h"
#include "core/read/span_cache.h"
#include "core/zip/seek_table.h"
#include "npzfs/member_reader.h"
#include "npzfs/status.h"
#include "npzfs/zip_directory.h"

namespace npzfs {

class DeflatedMember : public std::enable_shared_from_this<DeflatedMember> {
 public:
  static constexpr uint64_t kFastChunk = 256 << 10;
  // A multiple of kFastChunk. A snapshot holds ~54 KB (ISA-L's decode tables and 32 KiB of
  // history), so the store (an eighth of the cache) keeps about 300, thinned evenly over the
  // positions reached (snapshot_store.h). Measured before far reads were split (LRU store):
  // 200 random frames of a 1 GiB member on a fresh mount took 3.4 s every 2 MiB against 4.2
  // s every 1 MiB (every 4 MiB: 3.6 s; 512 KiB: 5.0 s).
  static constexpr uint64_t kSnapshotEvery = 2 << 20;
  // How many chunks the chain (see the essay) decodes ahead of a streaming reader.
  static constexpr uint64_t kFastLead = 4;
  // Known spans a DecodePool task decodes in a row for a streaming reader (see the essay).
  static constexpr size_t kRunSpans = 4;

  // `spacing` is clamped to [kMinSpacing, kMaxSpacing].
  DeflatedMember(std::shared_ptr<ArchiveShared> shared, uint64_t id, std::string member_path,
                 const ZipEntry& entry, uint64_t spacing);

  uint64_t size() const { return entry_.uncompressed_size; }
  Result<size_t> ReadAt(uint64_t offset, std::span<std::byte> dest);
  // The same read without the copy: up to `max` bytes at `offset` as pieces of the cached
  // spans, held by the answer (MemberReader::Read's held-memory answer).
  Result<ReadAnswer> ReadHeld(uint64_t offset, size_t max);
  // Runs the first pass to the end (without filling the cache).
  Status BuildIndex(const std::function<void(uint64_t, uint64_t)>& progress);
  // Runs the first pass until a checkpoint is at or past `offset` (or the index is complete).
  Status IndexUpTo(uint64_t offset);
  // Stops the background indexer after its current span and waits for it (the Archive goes
  // away); a later read starts it again if it is needed.
  void Cancel();

  bool complete() const;
  Status corruption() const;     // non-ok once the member is known corrupt (every read fails)
  bool indexer_started() const;  // a background first pass was started for this member
  size_t checkpoint_count() const;
  uint64_t indexed_bytes() const;  // the uncompressed offset of the last checkpoint
  uint64_t index_bytes() const;
  // Test hooks: spans the first pass produced, chunks the fast path produced, known spans
  // whose fast-engine stream was restored at their checkpoint (not continued).
  uint64_t first_pass_spans() const { return first_pass_spans_.load(); }
  uint64_t fast_chunks() const { return fast_chunks_.load(); }
  uint64_t span_restores() const { return span_restores_.load(); }
  // Far reads whose decoding was split between two cores (SkipFar's guess was proved right).
  uint64_t speculations() const { return speculations_.load(); }

  // Sidecar support. Snapshot returns the checkpoints worth saving (all of them when
  // complete; else those up to the frontier) and the version they correspond to.
  struct Snapshot {
    std::vector<Checkpoint> checkpoints;
    bool complete = false;
    uint64_t version = 0;
  };
  Snapshot TakeSnapshot() const;
  void MarkSaved(uint64_t version);
  bool dirty() const;
  // Installs checkpoints read from the sidecar (already validated by the caller).
  void Load(std::vector<Checkpoint> checkpoints, bool complete);
  // Installs the chunks of the member's seek table (parsed and checked against the entry)
  // as a complete index: every chunk starts byte-aligned with an empty window. False (and
  // nothing changes) if a chunk is longer than a span may be.
  bool UseSeekTable(const SeekTable& table);
  // The index is a seek table (and was not distrusted): no first pass, no sidecar record.
  bool seekable() const;

  const ZipEntry& entry() const { return entry_; }
  const std::string& member_path() const { return member_path_; }

 private:
  struct SpanRef {
    SpanPtr span;
    uint64_t start = 0;
  };
  // Where pos is, at one moment.
  struct Where {
    size_t k = 0;  // span (checkpoint) holding pos, or the last checkpoint
    bool known = false;
    uint64_t start = 0;
    uint64_t generation = 0;
    bool check_first = false;  // distrusted_ and not complete_: BuildIndex before serving
  };
  // One span of the first pass: its bytes, and where the next span starts (none at the end).
  struct NewSpan {
    SpanBuffer buf;
    size_t len = 0;
    std::optional<Checkpoint> next;
  };

  // deflated_member.cc: reads, known spans, read-ahead, failures.
  // ReadAt and ReadHeld: finds the spans holding up to `max` bytes at `offset` and hands each
  // piece to `sink` (the span, the offset within it, the piece's length, the bytes before
  // it); returns the bytes found.
  using GatherSink = std::function<void(const SpanRef&, uint64_t, size_t, size_t)>;
  Result<size_t> Gather(uint64_t offset, size_t max, const GatherSink& sink);
  // `ahead`: how many known spans to decode ahead of pos; `fast_lead`: how many chunks, on
  // the fast path.
  Result<SpanRef> SpanAt(uint64_t pos, size_t ahead, size_t fast_lead);
  Result<Where> Locate(uint64_t pos) const;
  Result<SpanRef> KnownSpan(const Where& w, size_t ahead);
  Result<SpanPtr> ProduceKnownSpan(size_t k, uint64_t generation);
  // The stream a span was decoded with, parked once the span is verified (never before:
  // a stream that produced wrong bytes must not be continued).
  struct SpanStream {
    std::unique_ptr<DecodeStream> fast;
    std::unique_ptr<InflateStream> zlib;
  };
  // Decodes `len` bytes from checkpoint `cp`, whose prefix has CRC-32 `crc_before` (a
  // parked stream continues when one is there). `chunk`: the span is a seek table's chunk,
  // whose compressed bytes end at `chunk->in_end`; it is decoded from those bytes alone and
  // must end exactly with them (DecodeStream::FinishChunk).
  struct ChunkEnd {
    uint64_t in_end = 0;
    bool last = false;
  };
  Result<size_t> DecodeSpan(const Checkpoint& cp, uint32_t crc_before, uint64_t generation,
                            std::byte* out, size_t len, SpanStream* used,
                            std::optional<ChunkEnd> chunk);
  // Parked streams and snapshots are keyed by member and generation: nothing made from
  // distrusted checkpoints is ever continued.
  uint64_t StreamKey(uint64_t generation) const { return (id_ << 20) | (generation & 0xfffff); }
  // Starts decoding the known spans after w.k on the DecodePool: at most `count`, and no
  // more than `max_bytes` of them (their real lengths, summed).
  void PrefetchSpans(const Where& w, size_t count, uint64_t max_bytes = UINT64_MAX);
  // The known spans after w.k that a read-ahead of at most `count` spans and `max_bytes`
  // may decode: w.k + 1 ..= last; at_end when last is the last known span. Nullopt if the
  // checkpoints were replaced since w.
  struct Ahead {
    size_t last = 0;
    bool at_end = false;
  };
  std::optional<Ahead> SpansAhead(const Where& w, size_t count, uint64_t max_bytes) const;
  // A streaming reader's read-ahead: runs of kRunSpans consecutive spans (see the essay),
  // each claimed in the cache through a SpanClaims guard that its DecodePool task holds.
  void StreamSpans(const Where& w);
  void RunSpans(SpanClaims& run);
  size_t SpansBefore(const Where& w, uint64_t end) const;  // known spans after w.k before end
  Status FailOrDistrust(uint64_t generation, const Status& failure);
  // Drops checkpoints from the sidecar (if still those of `generation`): EAGAIN (look up
  // again), or `failure` when they were not from the sidecar.
  Status Distrust(uint64_t generation, const Status& failure);
  Status Bad(const std::string& why) const;  // EIO naming the member, nothing marked
  Status EndsEarly(uint64_t at) const;       // Bad: the data ends at `at`, before size()
  Status Corrupt(const std::string& why);    // marks the member corrupt, logs, returns EIO
  Status MarkCorrupt(Status s);              // the same with a complete message

  // first_pass.cc: the zlib first pass and the background indexer.
  // Extends the first pass until the span holding `target` exists (target == UINT64_MAX:
  // to the end). Returns nullopt when another thread got there first (retry the lookup).
  Result<std::optional<SpanRef>> AdvanceFrontier(
      uint64_t target, bool fill_cache, const std::function<void(uint64_t, uint64_t)>& progress);
  // The first pass's steps, in order: inflate from checkpoint `cp` to the next checkpoint,
  // which is a block boundary at least MinSpanLength(cp, spacing_) bytes on (spacing_,
  // unless cp's sparse window is large), or a cut inside a longer block at twice that; give
  // the next checkpoint its sparse window; publish the span.
  Result<NewSpan> InflateSpan(InflateStream& stream, const Checkpoint& cp);
  Status MakeWindow(InflateStream& stream, NewSpan& span);
  Result<SpanPtr> PublishSpan(size_t k, uint64_t start, NewSpan span, bool fill_cache);
  // The first pass failed with `s` (frontier_mu_ held by `frontier`, released here).
  Status FirstPassFailed(std::unique_lock<std::mutex>& frontier, Status s, uint64_t generation);
  Result<std::unique_ptr<InflateStream>> StreamAt(const Checkpoint& cp, bool track_blocks,
                                                  uint64_t generation);
  void StartIndexer();
  static void IndexerStep(std::weak_ptr<DeflatedMember> weak);
  void RunIndexerStep();

  // fast_path.cc: chunks decoded ahead of the checkpoints.
  // `lead`: chunks to decode ahead of pos (0: none).
  Result<SpanRef> FastChunkAt(uint64_t pos, uint64_t generation, uint64_t lead);
  // The chain (see the essay): ahead of a sequential reader at `chunk`, claims the next
  // `lead` chunks for one DecodePool task that decodes them in order with its own stream.
  // Returns true when the caller must start the chain task (RunFastChain on the DecodePool).
  bool ExtendFastChain(uint64_t chunk, uint64_t lead, uint64_t generation);
  void RunFastChain();
  Result<SpanPtr> ProduceFastChunk(uint64_t chunk, uint64_t generation);
  Result<std::unique_ptr<DecodeStream>> FastStreamAt(uint64_t pos, uint64_t generation);
  Status SkipTo(DecodeStream& stream, uint64_t pos, uint64_t generation);
  // SkipTo for a `pos` at least speculate_bytes beyond the stream: the decoding is split with
  // a DecodePool thread (see the essay); `stream` may be replaced by the helper's.
  Status SkipFar(std::unique_ptr<DecodeStream>& stream, uint64_t pos, uint64_t generation);
  struct Speculation;
  void RunSpeculation(Speculation& spec);  // the helper: a DecodePool task
  void SpeculateFrom(Speculation& spec,
                     const std::function<void(std::unique_ptr<DecodeStream>)>& finish);
  void MaybeSnapshot(const DecodeStream& stream, uint64_t generation);
  // At the member's end: the stream ends here, and its CRC-32 is the directory's.
  Status CheckFastEnd(DecodeStream& stream);
  SpanKey FastKey(uint64_t chunk, uint64_t generation) const;

  const std::shared_ptr<ArchiveShared> shared_;
  const uint64_t id_;
  const std::string member_path_;
  const ZipEntry entry_;
  const uint64_t spacing_;
  const DeflateSource source_;

  std::mutex frontier_mu_;
  mutable std::mutex index_mu_;
  std::vector<Checkpoint> checkpoints_;  // checkpoints_[0] is the start of the data
  std::vector<uint32_t> prefix_crcs_;    // CRC-32 of [0, checkpoints_[k].out)
  bool complete_ = false;                // every span known, whole CRC checked
  Status corrupt_;                       // non-ok once corrupt: every read fails
  uint64_t generation_ = 0;              // bumped when checkpoints_ is replaced
  bool from_saved_ = false;              // checkpoints_ came from the sidecar or seek table
  // Saved checkpoints failed against the data (Distrust): either they or the data are bad,
  // so nothing is served until the rebuilt index's pass checked the member's CRC-32.
  bool distrusted_ = false;
  bool seekable_ = false;  // checkpoints_ are the chunks of a valid seek table
  uint64_t version_ = 0;   // bumped when checkpoints are learned
  uint64_t saved_version_ = 0;

  mutable std::mutex indexer_mu_;
  std::condition_variable indexer_cv_;  // signalled when a step ends
  bool indexer_running_ = false;        // a step is queued or running
  bool indexer_started_ = false;        // StartIndexer ran once
  bool indexer_step_running_ = false;
  bool cancel_ = false;

  SequentialRun sequential_;
  std::mutex run_mu_;              // guards the runs' state below (before SpanCache's lock)
  uint64_t run_generation_ = 0;    // of the checkpoints the runs were claimed under
  size_t run_end_ = 0;             // runs have claimed (or skipped) the spans before this
  std::mutex chain_mu_;            // guards the chain's state below (before SpanCache's lock)
  bool chain_running_ = false;     // a chain task is queued or running
  uint64_t chain_generation_ = 0;  // of the checkpoints its stream started from
  uint64_t chain_end_ = 0;         // the chain has claimed (or found claimed) chunks before this
  std::deque<uint64_t> chain_claimed_;  // claimed in the cache, not yet decoded, in order
  std::atomic<uint64_t> first_pass_spans_{0};
  std::atomic<uint64_t> fast_chunks_{0};
  std::atomic<uint64_t> span_restores_{0};
  std::atomic<uint64_t> speculations_{0};
};

// A reader handle of a deflated member.
std::shared_ptr<MemberReader> MakeDeflatedReader(std::shared_ptr<DeflatedMember> member);

}  // namespace npzfs
