// The deflated shadow of a growing member: its data, chunk by chunk, deflated ahead of
// finalize by the background deflater (core/write/background_deflater.h), so that a
// deflating finalize copies compressed bytes instead of compressing.
//
// Two files next to the member's spool file "<spool>/<file>" (dot names: Spool::Open never
// takes them for members):
//   ".<file>.npzfs-deflate"        the chunks' compressed bytes, back to back from offset
//                                  kDeflateShadowDataStart (see "Adoption");
//   ".<file>.npzfs-deflate-index"  a header (level, chunk size) and one record per chunk.
// Chunk i holds data bytes [i * chunk_size, (i + 1) * chunk_size) of the member (after the
// .npy header, which finalize deflates as a chunk of its own, so its count may still change),
// deflated as ChunkedDeflater deflates a chunk: its own raw deflate state, a full flush.
//
// Crash safety. A chunk's bytes are written first; its record is appended only after the
// bytes were fsynced (Sync, every 256 chunks and whenever the deflater is idle), so a
// record never names bytes a power cut could lose. Nor does a record ever cover spool bytes
// a power cut could lose: before it writes records, Sync makes the spool bytes they were
// deflated from durable (the SourceSync given to Open: the background deflater fdatasyncs
// the spool file). Without that, a record could survive a power cut that the spool data
// behind it did not; the writer would then write other frames at the same offsets, and
// finalize would copy the stale chunk, with its stale CRC-32, so no check would notice.
// On Open, the records are checked (each has a CRC-32 seeded with its index) and kept while
// they are intact, their bytes are in the data file and match the CRC-32 the record holds of
// them (damage to the data file, which finalize would otherwise copy into the archive as it
// is, and the spool with the good bytes then removed), and their chunk lies within the
// member's data (which, by the rule above, is then the data the chunk was made from); the
// rest is cut off, and those chunks are deflated again from the spool file. That check reads
// the whole data file once per Open: only a resumed spool has one to read. A chunk written but not
// yet recorded when the daemon died is simply redone. The raw spool file is never written here:
// losing a shadow costs time at finalize, never data.
//
// Adoption. The first 4 KiB of the data file stay free (a hole), so that a finalize that
// creates the archive can make this file the archive itself: the member's local header and
// its .npy header's chunk go into that room, the remaining chunks and the directory after
// the recorded chunks, and the file is renamed into place (core/zip/archive_writer.cc). The
// recorded chunks are never written there, so a finalize that fails halfway leaves the
// shadow as usable as before.
//
// Ownership: a DeflateShadow owns the two fds. Not thread-safe: one thread at a time (the
// background deflater, then finalize) uses it.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "npzfs/archive_writer.h"
#include "npzfs/file_util.h"
#include "npzfs/status.h"

namespace npzfs {

inline constexpr std::string_view kDeflateShadowMagic = "NPZFSDFL";
inline constexpr uint32_t kDeflateShadowVersion = 3;       // 2: no CRC of the deflate bytes;
                                                           // 1: chunks from offset 0
inline constexpr uint64_t kDeflateShadowDataStart = 4096;  // where the first chunk starts
inline constexpr size_t kDeflateShadowHeaderSize = 32;     // magic, version, level, chunk size,
                                                           // reserved, CRC-32
inline constexpr size_t kDeflateShadowRecordSize = 16;     // compressed, chunk CRC, deflate
                                                           // bytes' CRC, record CRC

class DeflateShadow {
 public:
  // ".<file>.npzfs-deflate" and ".<file>.npzfs-deflate-index" for spool file "<dir>/<file>".
  static std::string DataPath(const std::string& spool_path);
  static std::string IndexPath(const std::string& spool_path);

  // Opens the shadow of the member whose spool file is `spool_path`, keeping the recorded
  // chunks that are intact and lie within its first `data_bytes` data bytes. For the
  // background deflater (`writable`): creates missing files, empties a shadow of another
  // level or chunk size, and cuts off what it does not keep. For finalize (not writable):
  // ENOENT if there is no shadow; a shadow of another level or chunk size has no chunks;
  // nothing is changed on disk.
  //
  // `sync_source` (writable shadows) makes the spool bytes of every chunk appended so far
  // durable; Sync calls it before it writes their records (see "Crash safety"). Only tests
  // of the shadow's own files leave it empty.
  using SourceSync = std::function<Status()>;
  static Result<std::unique_ptr<DeflateShadow>> Open(const std::string& spool_path, int level,
                                                     uint64_t chunk_size, uint64_t data_bytes,
                                                     bool writable,
                                                     SourceSync sync_source = nullptr);
  // Removes both files (missing ones are fine).
  static Status Remove(const std::string& spool_path);
  // The spool file name a shadow file name (".<file>.npzfs-deflate" or
  // ".<file>.npzfs-deflate-index") belongs to; "" for any other name.
  static std::string SpoolFileOf(std::string_view shadow_name);

  ~DeflateShadow();
  size_t chunk_count() const { return chunks_.size(); }
  int level() const { return level_; }
  uint64_t chunk_size() const { return chunk_size_; }

  // Appends chunk chunk_count(): its compressed bytes and the CRC-32 of its uncompressed
  // bytes (the CRC-32 of the compressed bytes is taken here). Its record becomes durable at the
  // next Sync (done here every 256 chunks).
  Status Append(std::string_view compressed, uint32_t crc32);
  // Makes the spool bytes of the chunks appended since the last Sync durable (sync_source),
  // fsyncs their compressed bytes, then records them.
  Status Sync();
  // The chunks (recorded or not) covering at most the member's first `max_data_bytes` data
  // bytes, for finalize in this process; adoptable (see above) when that is all of them. The
  // result borrows this shadow's data fd: keep the shadow alive while it is used.
  std::shared_ptr<const PredeflatedChunks> Chunks(uint64_t max_data_bytes) const;

 private:
  DeflateShadow(std::string spool_path, int level, uint64_t chunk_size, SourceSync sync_source)
      : spool_path_(std::move(spool_path)),
        level_(level),
        chunk_size_(chunk_size),
        sync_source_(std::move(sync_source)) {}
  Status Load(uint64_t data_bytes, bool writable);
  Status Reset();  // empties both files and writes the header

  std::string spool_path_;
  int level_;
  uint64_t chunk_size_;
  SourceSync sync_source_;
  UniqueFd data_fd_, index_fd_;
  std::vector<PredeflatedChunks::Chunk> chunks_;
  std::vector<uint32_t> deflated_crcs_;  // per chunk: CRC-32 of its compressed bytes
  size_t recorded_ = 0;    // chunks whose records are in the index file
  uint64_t data_end_ = 0;  // end of the compressed bytes
};

}  // namespace npzfs
