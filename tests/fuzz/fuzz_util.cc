#include "tests/fuzz/fuzz_util.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>

namespace npzfs::fuzz {

uint8_t FuzzInput::U8() {
  uint8_t v = 0;
  return reader_.U8(&v) ? v : 0;
}
uint16_t FuzzInput::U16() { return static_cast<uint16_t>(U8() | (U8() << 8)); }
uint32_t FuzzInput::U32() { return U16() | (static_cast<uint32_t>(U16()) << 16); }
uint64_t FuzzInput::U64() { return U32() | (static_cast<uint64_t>(U32()) << 32); }

uint64_t FuzzInput::Range(uint64_t lo, uint64_t hi) {
  const uint64_t span = hi - lo;
  if (span == 0) return lo;
  // As many bytes as the span needs, so that small ranges cost one byte of input.
  uint64_t v = 0;
  for (uint64_t s = span; s != 0; s >>= 8) v = (v << 8) | U8();
  return span == UINT64_MAX ? v : lo + v % (span + 1);
}

std::string FuzzInput::Bytes(size_t n) {
  std::string out;
  n = std::min(n, reader_.remaining());
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) out.push_back(static_cast<char>(U8()));
  return out;
}

std::string FuzzInput::Rest() { return Bytes(reader_.remaining()); }

void Fail(const char* file, int line, const std::string& what) {
  std::fprintf(stderr, "fuzz check failed at %s:%d: %s\n", file, line, what.c_str());
  std::fflush(stderr);
  std::abort();
}

namespace {
std::string& ScratchPath() {
  static std::string path;
  return path;
}
void RemoveScratch() {
  std::error_code ec;
  std::filesystem::remove_all(ScratchPath(), ec);
}
}  // namespace

const std::string& ScratchDir() {
  std::string& path = ScratchPath();
  if (path.empty()) {
    const char* base = std::getenv("TMPDIR");
    std::string pattern = std::string(base && *base ? base : "/tmp") + "/npzfs-fuzz-XXXXXX";
    if (::mkdtemp(pattern.data()) == nullptr) {
      std::perror(pattern.c_str());
      std::abort();
    }
    path = pattern;
    std::atexit(RemoveScratch);  // runs before `path` is destroyed (registered after it)
  }
  return path;
}

void WriteFileOrAbort(const std::string& path, std::string_view bytes) {
  auto fd = OpenFile(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  Status st = fd.ok() ? WriteAll(fd->get(), bytes.data(), bytes.size(), path) : fd.status();
  if (!st.ok()) Fail(__FILE__, __LINE__, "harness could not write a file: " + st.message());
}

UniqueFd MemFileOrAbort(std::string_view bytes) {
  UniqueFd fd(::memfd_create("npzfs-fuzz", MFD_CLOEXEC));
  if (!fd.valid()) Fail(__FILE__, __LINE__, "memfd_create failed");
  Status st = WriteAll(fd.get(), bytes.data(), bytes.size(), "memfd");
  if (!st.ok()) Fail(__FILE__, __LINE__, "harness could not fill a memfd: " + st.message());
  return fd;
}

namespace {
// Window bits for a raw deflate stream (negative: no zlib header) with a 32 KiB window.
constexpr int kRawWindowBits = -15;
constexpr size_t kChunk = 1 << 16;

// zlib streams pinned on the heap (zlib keeps a pointer back to the z_stream), ended by RAII.
struct Deflater {
  z_stream s{};
  ~Deflater() { deflateEnd(&s); }
};
struct Inflater {
  z_stream s{};
  ~Inflater() { inflateEnd(&s); }
};
}  // namespace

std::string RawDeflate(std::string_view plain, int level, int strategy, int mem_level,
                       size_t flush_every) {
  auto d = std::make_unique<Deflater>();
  z_stream* s = &d->s;
  if (deflateInit2(s, level, Z_DEFLATED, kRawWindowBits, mem_level, strategy) != Z_OK) {
    Fail(__FILE__, __LINE__, "deflateInit2 failed");
  }
  std::string out;
  size_t pos = 0;
  int flushes = 0;
  char buf[kChunk];
  while (true) {
    size_t n = plain.size() - pos;
    if (flush_every > 0) n = std::min(n, flush_every);
    const bool last = pos + n == plain.size();
    const int flush = last              ? Z_FINISH
                      : flush_every > 0 ? (flushes++ % 2 ? Z_FULL_FLUSH : Z_SYNC_FLUSH)
                                        : Z_NO_FLUSH;
    s->next_in = reinterpret_cast<Bytef*>(const_cast<char*>(plain.data() + pos));
    s->avail_in = static_cast<uInt>(n);
    int rc;
    do {
      s->next_out = reinterpret_cast<Bytef*>(buf);
      s->avail_out = sizeof(buf);
      rc = deflate(s, flush);
      if (rc == Z_STREAM_ERROR) Fail(__FILE__, __LINE__, "deflate failed");
      out.append(buf, sizeof(buf) - s->avail_out);
    } while (s->avail_out == 0 || (last && rc != Z_STREAM_END));
    pos += n;
    if (last) break;
  }
  return out;
}

bool RawInflate(std::string_view raw, size_t max_output, std::string* plain, size_t* consumed) {
  auto i = std::make_unique<Inflater>();
  z_stream* s = &i->s;
  if (inflateInit2(s, kRawWindowBits) != Z_OK) Fail(__FILE__, __LINE__, "inflateInit2");
  plain->clear();
  s->next_in = reinterpret_cast<Bytef*>(const_cast<char*>(raw.data()));
  s->avail_in = static_cast<uInt>(raw.size());
  char buf[kChunk];
  while (true) {
    s->next_out = reinterpret_cast<Bytef*>(buf);
    s->avail_out = sizeof(buf);
    const int rc = inflate(s, Z_NO_FLUSH);
    plain->append(buf, sizeof(buf) - s->avail_out);
    if (plain->size() > max_output) return false;
    if (rc == Z_STREAM_END) break;
    if (rc != Z_OK) return false;  // data error, or Z_BUF_ERROR: the input ran out
  }
  *consumed = raw.size() - s->avail_in;
  return true;
}

uint32_t Crc32(std::string_view bytes) {
  return static_cast<uint32_t>(
      crc32_z(0, reinterpret_cast<const Bytef*>(bytes.data()), bytes.size()));
}

uint32_t XorShift(uint32_t& s) {
  s ^= s << 13;
  s ^= s >> 17;
  s ^= s << 5;
  return s;
}

void AppendNoise(FuzzInput& in, size_t room, uint32_t& state, std::string* plain) {
  for (size_t n = std::min<size_t>(in.Range(1, 16384), room); n > 0; --n) {
    plain->push_back(static_cast<char>(XorShift(state)));
  }
}

void AppendBackCopy(FuzzInput& in, size_t room, std::string* plain) {
  if (plain->empty()) return;
  const size_t dist = in.Range(1, std::min<size_t>(plain->size(), 32768));
  const size_t len = std::min<size_t>(in.Range(3, 2048), room);
  const size_t from = plain->size() - dist;
  for (size_t i = 0; i < len; ++i) plain->push_back((*plain)[from + i]);
}

void AppendRun(FuzzInput& in, size_t room, std::string* plain) {
  const size_t len = std::min<size_t>(in.Range(1, 65536), room);
  plain->append(len, static_cast<char>(in.U8()));
}

}  // namespace npzfs::fuzz
