// bench_baseline: the in-process zlib (and ISA-L) baselines that tools/bench/bench.py compares
// npzfs with.
//
// The benchmark states every target as a ratio to a baseline measured in the same run on the
// same data. Three of those baselines are "what plain zlib does in one thread, with no filesystem
// in between", and this program measures them:
//
//   bench_baseline inflate FILE OFFSET CSIZE
//       Inflates the raw deflate stream at [OFFSET, OFFSET+CSIZE) of FILE (a zip member's
//       data), reading it with pread in 256 KiB pieces and throwing the output away.
//       Scenario 3's baseline.
//   bench_baseline spans FILE OFFSET CSIZE SPACING COUNT RUNS SEED
//       Makes one untimed pass that records zran-style access points (deflate block
//       boundaries at least SPACING output bytes apart, with the full 32 KiB window), then,
//       RUNS times, times COUNT inflates of one whole span from a random access point
//       (pread of its compressed bytes + inflatePrime + inflateSetDictionary + inflate to
//       the next access point). Scenario 4's baseline: "the time to inflate one span".
//   bench_baseline inflate-isal FILE OFFSET CSIZE
//       The same loop as `inflate` with ISA-L's isal_inflate (when built with ISA-L): how
//       fast the engine npzfs uses can go in one thread, so the table shows how close each
//       path comes to it.
//   bench_baseline deflate FILE LEVEL
//       Raw-deflates the whole of FILE at LEVEL (memLevel 8, default strategy, as zipfile
//       and numpy do) into a discarded buffer. Scenario 10's deflated-finalize baseline.
//
// Each mode prints one JSON object per line on stdout (bench.py parses it) and exits 0, or
// prints the error to stderr and exits 1. The baselines are deliberately the plain loops a
// careful programmer would write: no CRC-32 (npzfs computes one, so the comparison is, if
// anything, strict), no threads, buffers allocated once outside the timed region.
//
// Why not measure these with Python's zlib module? Its per-call overhead and the copies into
// bytes objects would make the baseline slower than zlib really is, and npzfs would look
// better than it is.
#include <fcntl.h>
#include <zlib.h>

#ifdef NPZFS_HAVE_ISAL
#include <isa-l/igzip_lib.h>
#endif

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "npzfs/file_util.h"
#include "npzfs/status.h"

namespace {

using npzfs::Result;
using npzfs::Status;
using Clock = std::chrono::steady_clock;

constexpr size_t kInChunk = 256 << 10;
constexpr size_t kOutChunk = 1 << 20;
constexpr size_t kWindow = 32768;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Owns one raw-deflate inflate stream. Not movable: zlib keeps a pointer back to the
// z_stream inside its state, so the object must stay where inflateInit2 saw it.
class Inflater {
 public:
  Inflater() { ok_ = inflateInit2(&strm_, -15) == Z_OK; }
  Inflater(const Inflater&) = delete;
  Inflater& operator=(const Inflater&) = delete;
  ~Inflater() {
    if (ok_) inflateEnd(&strm_);
  }
  bool ok() const { return ok_; }
  z_stream* get() { return &strm_; }

 private:
  z_stream strm_{};
  bool ok_ = false;
};

// Owns one raw-deflate compress stream; not movable for the same reason as Inflater.
class Deflater {
 public:
  explicit Deflater(int level) {
    ok_ = deflateInit2(&strm_, level, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) == Z_OK;
  }
  Deflater(const Deflater&) = delete;
  Deflater& operator=(const Deflater&) = delete;
  ~Deflater() {
    if (ok_) deflateEnd(&strm_);
  }
  bool ok() const { return ok_; }
  z_stream* get() { return &strm_; }

 private:
  z_stream strm_{};
  bool ok_ = false;
};

Status ZlibError(const std::string& path, const char* what, int ret, const z_stream* strm) {
  return Status::Error(EIO, path + ": " + what + " failed (" + std::to_string(ret) + ": " +
                                (strm->msg != nullptr ? strm->msg : "no message") + ")");
}

// Scenario 3's baseline: one thread, pread + inflate, output discarded.
Status RunInflate(const std::string& path, uint64_t offset, uint64_t csize) {
  NPZ_ASSIGN_OR_RETURN(npzfs::UniqueFd fd, npzfs::OpenFile(path, O_RDONLY));
  std::vector<unsigned char> in(kInChunk);
  std::vector<unsigned char> out(kOutChunk);
  Inflater inflater;
  if (!inflater.ok()) return Status::Error(ENOMEM, path + ": inflateInit2 failed");
  z_stream* strm = inflater.get();

  const auto start = Clock::now();
  uint64_t consumed = 0;
  uint64_t produced = 0;
  int ret = Z_OK;
  while (ret != Z_STREAM_END) {
    if (strm->avail_in == 0 && consumed < csize) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(kInChunk, csize - consumed));
      NPZ_RETURN_IF_ERROR(npzfs::PreadExact(fd.get(), in.data(), n, offset + consumed, path));
      consumed += n;
      strm->next_in = in.data();
      strm->avail_in = static_cast<uInt>(n);
    }
    strm->next_out = out.data();
    strm->avail_out = static_cast<uInt>(out.size());
    ret = inflate(strm, Z_NO_FLUSH);
    if (ret == Z_BUF_ERROR && consumed == csize) {
      return Status::Error(EIO, path + ": deflate stream is truncated");
    }
    if (ret != Z_OK && ret != Z_STREAM_END) return ZlibError(path, "inflate", ret, strm);
    produced += out.size() - strm->avail_out;
  }
  const double seconds = SecondsSince(start);
  std::printf("{\"seconds\": %.6f, \"bytes\": %" PRIu64 ", \"compressed\": %" PRIu64 "}\n", seconds,
              produced, csize);
  return Status::Ok();
}

// The ISA-L baseline: the same pread loop as RunInflate, isal_inflate instead of inflate.
Status RunInflateIsal(const std::string& path, uint64_t offset, uint64_t csize) {
#ifdef NPZFS_HAVE_ISAL
  NPZ_ASSIGN_OR_RETURN(npzfs::UniqueFd fd, npzfs::OpenFile(path, O_RDONLY));
  std::vector<unsigned char> in(kInChunk);
  std::vector<unsigned char> out(kOutChunk);
  auto state = std::make_unique<inflate_state>();
  isal_inflate_init(state.get());
  inflate_state* s = state.get();
  const auto start = Clock::now();
  uint64_t consumed = 0;
  uint64_t produced = 0;
  while (s->block_state != ISAL_BLOCK_FINISH) {
    if (s->avail_in == 0 && consumed < csize) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(kInChunk, csize - consumed));
      NPZ_RETURN_IF_ERROR(npzfs::PreadExact(fd.get(), in.data(), n, offset + consumed, path));
      consumed += n;
      s->next_in = in.data();
      s->avail_in = static_cast<uint32_t>(n);
    }
    s->next_out = out.data();
    s->avail_out = static_cast<uint32_t>(out.size());
    const int ret = isal_inflate(s);
    if (ret < 0)
      return Status::Error(EIO, path + ": isal_inflate failed (" + std::to_string(ret) + ")");
    const size_t got = out.size() - s->avail_out;
    if (got == 0 && s->avail_in == 0 && consumed == csize && s->block_state != ISAL_BLOCK_FINISH) {
      return Status::Error(EIO, path + ": deflate stream is truncated");
    }
    produced += got;
  }
  const double seconds = SecondsSince(start);
  std::printf("{\"seconds\": %.6f, \"bytes\": %" PRIu64 ", \"compressed\": %" PRIu64 "}\n", seconds,
              produced, csize);
  return Status::Ok();
#else
  (void)offset;
  (void)csize;
  return Status::Error(ENOTSUP, path + ": bench_baseline was built without ISA-L");
#endif
}

// One zran access point: where a deflate block starts, and the window before it.
struct AccessPoint {
  uint64_t out_offset;  // uncompressed offset of the block
  uint64_t in_offset;   // compressed offset of the first byte holding bits of the block
  int bits;             // bits of the byte at in_offset - 1 that belong to the block (0-7)
  std::vector<unsigned char> window;  // the 32 KiB of output before out_offset
};

// The untimed first pass of the spans mode: records access points at block boundaries at
// least `spacing` output bytes apart (the first one at offset 0), as zlib's examples/zran.c.
Result<std::vector<AccessPoint>> BuildAccessPoints(int fd, const std::string& path, uint64_t offset,
                                                   uint64_t csize, uint64_t spacing,
                                                   uint64_t* total_out) {
  std::vector<unsigned char> in(kInChunk);
  // A ring is not needed: the window is copied out of a 32 KiB-aligned history buffer.
  std::vector<unsigned char> history(kWindow);
  std::vector<unsigned char> out(kWindow);
  Inflater inflater;
  if (!inflater.ok()) return Status::Error(ENOMEM, path + ": inflateInit2 failed");
  z_stream* strm = inflater.get();

  std::vector<AccessPoint> points;
  points.push_back(AccessPoint{0, 0, 0, {}});
  uint64_t consumed = 0;  // compressed bytes handed to zlib
  uint64_t produced = 0;
  uint64_t last = 0;
  int ret = Z_OK;
  while (ret != Z_STREAM_END) {
    if (strm->avail_in == 0 && consumed < csize) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(kInChunk, csize - consumed));
      NPZ_RETURN_IF_ERROR(npzfs::PreadExact(fd, in.data(), n, offset + consumed, path));
      consumed += n;
      strm->next_in = in.data();
      strm->avail_in = static_cast<uInt>(n);
    }
    strm->next_out = out.data();
    strm->avail_out = static_cast<uInt>(out.size());
    ret = inflate(strm, Z_BLOCK);
    if (ret != Z_OK && ret != Z_STREAM_END && ret != Z_BUF_ERROR) {
      return ZlibError(path, "inflate", ret, strm);
    }
    const size_t got = out.size() - strm->avail_out;
    if (ret == Z_BUF_ERROR && got == 0 && consumed == csize) {
      return Status::Error(EIO, path + ": deflate stream is truncated");
    }
    // Keep the last 32 KiB of output in `history` (oldest first).
    if (got >= kWindow) {
      std::memcpy(history.data(), out.data() + got - kWindow, kWindow);
    } else if (got > 0) {
      std::memmove(history.data(), history.data() + got, kWindow - got);
      std::memcpy(history.data() + kWindow - got, out.data(), got);
    }
    produced += got;
    const bool at_block_end = (strm->data_type & 128) != 0 && (strm->data_type & 64) == 0;
    if (ret != Z_STREAM_END && at_block_end && produced - last >= spacing && produced >= kWindow) {
      points.push_back(
          AccessPoint{produced, consumed - strm->avail_in, strm->data_type & 7, history});
      last = produced;
    }
  }
  *total_out = produced;
  return points;
}

Status RunSpans(const std::string& path, uint64_t offset, uint64_t csize, uint64_t spacing,
                int count, int runs, unsigned seed) {
  NPZ_ASSIGN_OR_RETURN(npzfs::UniqueFd fd, npzfs::OpenFile(path, O_RDONLY));
  uint64_t total_out = 0;
  NPZ_ASSIGN_OR_RETURN(std::vector<AccessPoint> points,
                       BuildAccessPoints(fd.get(), path, offset, csize, spacing, &total_out));
  if (points.size() < 2) return Status::Error(EINVAL, path + ": member too small for spans");

  // Buffers sized for the largest span, allocated before timing.
  uint64_t max_in = 0;
  uint64_t max_out = 0;
  for (size_t i = 0; i < points.size(); ++i) {
    const uint64_t in_end = i + 1 < points.size() ? points[i + 1].in_offset : csize;
    const uint64_t out_end = i + 1 < points.size() ? points[i + 1].out_offset : total_out;
    max_in = std::max<uint64_t>(max_in, in_end - points[i].in_offset + 1);
    max_out = std::max<uint64_t>(max_out, out_end - points[i].out_offset);
  }
  std::vector<unsigned char> in(max_in);
  std::vector<unsigned char> out(max_out);
  Inflater inflater;
  if (!inflater.ok()) return Status::Error(ENOMEM, path + ": inflateInit2 failed");
  z_stream* strm = inflater.get();

  std::mt19937_64 rng(seed);
  // Only whole spans are timed: the last access point's span runs to the end of the stream
  // and may be short, so it is not picked.
  std::uniform_int_distribution<size_t> pick(0, points.size() - 2);
  std::printf("{\"points\": %zu, \"total_out\": %" PRIu64 ", \"spacing\": %" PRIu64 "}\n",
              points.size(), total_out, spacing);
  for (int run = 0; run < runs; ++run) {
    std::vector<double> times;
    times.reserve(static_cast<size_t>(count));
    for (int k = 0; k < count; ++k) {
      const AccessPoint& p = points[pick(rng)];
      const AccessPoint& next = points[static_cast<size_t>(&p - points.data()) + 1];
      const auto start = Clock::now();
      // The first byte is shared with the previous block when bits != 0.
      const uint64_t in_begin = p.in_offset - (p.bits != 0 ? 1 : 0);
      const uint64_t in_len = next.in_offset + 1 - in_begin;
      const uint64_t avail = csize - in_begin;
      const size_t n = static_cast<size_t>(std::min<uint64_t>(in_len, avail));
      NPZ_RETURN_IF_ERROR(npzfs::PreadExact(fd.get(), in.data(), n, offset + in_begin, path));
      inflateReset(strm);
      strm->next_in = in.data();
      strm->avail_in = static_cast<uInt>(n);
      if (p.bits != 0) {
        const int byte = in[0];
        strm->next_in++;
        strm->avail_in--;
        inflatePrime(strm, p.bits, byte >> (8 - p.bits));
      }
      if (!p.window.empty()) {
        inflateSetDictionary(strm, p.window.data(), static_cast<uInt>(p.window.size()));
      }
      const uint64_t want = next.out_offset - p.out_offset;
      strm->next_out = out.data();
      strm->avail_out = static_cast<uInt>(want);
      const int ret = inflate(strm, Z_NO_FLUSH);
      if (ret != Z_OK && ret != Z_STREAM_END && ret != Z_BUF_ERROR) {
        return ZlibError(path, "inflate (span)", ret, strm);
      }
      if (strm->avail_out != 0) {
        return Status::Error(
            EIO, path + ": span at " + std::to_string(p.out_offset) + " inflated short");
      }
      times.push_back(SecondsSince(start));
    }
    std::sort(times.begin(), times.end());
    const double p50 = times[times.size() / 2];
    const double p99 = times[std::min(times.size() - 1, (times.size() * 99) / 100)];
    std::printf("{\"run\": %d, \"p50\": %.6f, \"p99\": %.6f, \"max\": %.6f}\n", run, p50, p99,
                times.back());
  }
  return Status::Ok();
}

// Scenario 10's deflated baseline: one thread, pread + deflate, output discarded.
Status RunDeflate(const std::string& path, int level) {
  NPZ_ASSIGN_OR_RETURN(npzfs::UniqueFd fd, npzfs::OpenFile(path, O_RDONLY));
  NPZ_ASSIGN_OR_RETURN(uint64_t size, npzfs::FileSize(fd.get(), path));
  std::vector<unsigned char> in(kOutChunk);
  std::vector<unsigned char> out(kOutChunk);
  Deflater deflater(level);
  if (!deflater.ok()) return Status::Error(EINVAL, path + ": deflateInit2 failed");
  z_stream* strm = deflater.get();

  const auto start = Clock::now();
  uint64_t done = 0;
  uint64_t produced = 0;
  int ret = Z_OK;
  while (ret != Z_STREAM_END) {
    int flush = Z_NO_FLUSH;
    if (strm->avail_in == 0) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(in.size(), size - done));
      if (n > 0) {
        NPZ_RETURN_IF_ERROR(npzfs::PreadExact(fd.get(), in.data(), n, done, path));
      }
      done += n;
      strm->next_in = in.data();
      strm->avail_in = static_cast<uInt>(n);
    }
    if (done == size) flush = Z_FINISH;
    strm->next_out = out.data();
    strm->avail_out = static_cast<uInt>(out.size());
    ret = deflate(strm, flush);
    if (ret == Z_STREAM_ERROR) return ZlibError(path, "deflate", ret, strm);
    produced += out.size() - strm->avail_out;
  }
  const double seconds = SecondsSince(start);
  std::printf("{\"seconds\": %.6f, \"bytes\": %" PRIu64 ", \"compressed\": %" PRIu64 "}\n", seconds,
              size, produced);
  return Status::Ok();
}

uint64_t ParseU64(const char* text, const char* what) {
  char* end = nullptr;
  errno = 0;
  const unsigned long long v = std::strtoull(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0') {
    std::fprintf(stderr, "bench_baseline: bad %s: %s\n", what, text);
    std::exit(2);
  }
  return v;
}

int Usage() {
  std::fprintf(stderr,
               "usage: bench_baseline inflate FILE OFFSET CSIZE\n"
               "       bench_baseline inflate-isal FILE OFFSET CSIZE\n"
               "       bench_baseline spans FILE OFFSET CSIZE SPACING COUNT RUNS SEED\n"
               "       bench_baseline deflate FILE LEVEL\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return Usage();
  const std::string mode = argv[1];
  Status status;
  if (mode == "inflate" && argc == 5) {
    status = RunInflate(argv[2], ParseU64(argv[3], "offset"), ParseU64(argv[4], "size"));
  } else if (mode == "inflate-isal" && argc == 5) {
    status = RunInflateIsal(argv[2], ParseU64(argv[3], "offset"), ParseU64(argv[4], "size"));
  } else if (mode == "spans" && argc == 9) {
    status = RunSpans(argv[2], ParseU64(argv[3], "offset"), ParseU64(argv[4], "size"),
                      ParseU64(argv[5], "spacing"), static_cast<int>(ParseU64(argv[6], "count")),
                      static_cast<int>(ParseU64(argv[7], "runs")),
                      static_cast<unsigned>(ParseU64(argv[8], "seed")));
  } else if (mode == "deflate" && argc == 4) {
    status = RunDeflate(argv[2], static_cast<int>(ParseU64(argv[3], "level")));
  } else {
    return Usage();
  }
  if (!status.ok()) {
    std::fprintf(stderr, "bench_baseline: %s\n", status.message().c_str());
    return 1;
  }
  return 0;
}
