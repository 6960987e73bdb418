// The two inflate engines (see inflate_engine.h).
#include "core/read/inflate_engine.h"

#include <zlib.h>

#include <algorithm>
#include <climits>
#include <cstddef>
#include <cstring>
#include <string>

#ifdef NPZFS_HAVE_ISAL
#include <isa-l/igzip_lib.h>
#endif

namespace npzfs {
namespace {

constexpr size_t kMaxCall = size_t{1} << 30;  // both engines count bytes in 32 bits

class ZlibEngine final : public InflateEngine {
 public:
  ZlibEngine() : s_(std::make_unique<z_stream>()) { *s_ = z_stream{}; }
  ~ZlibEngine() override {
    if (ok_) inflateEnd(s_.get());
  }
  ZlibEngine(const ZlibEngine&) = delete;
  ZlibEngine& operator=(const ZlibEngine&) = delete;

  static Result<std::unique_ptr<InflateEngine>> Create() {
    auto e = std::make_unique<ZlibEngine>();
    if (inflateInit2(e->s_.get(), -15) != Z_OK) return Status::Error(ENOMEM, "inflateInit failed");
    e->ok_ = true;
    return std::unique_ptr<InflateEngine>(std::move(e));
  }

  Status Reset(uint8_t bits, uint8_t byte, std::span<const std::byte> dict) override {
    inflateReset(s_.get());
    if (bits != 0) inflatePrime(s_.get(), bits, byte >> (8 - bits));
    if (!dict.empty()) {
      const int r = inflateSetDictionary(s_.get(), reinterpret_cast<const Bytef*>(dict.data()),
                                         static_cast<uInt>(dict.size()));
      if (r != Z_OK) return Status::Error(EIO, "inflateSetDictionary failed");
    }
    return Status::Ok();
  }

  Result<Step> Inflate(std::span<const std::byte> in, std::span<std::byte> out) override {
    z_stream* s = s_.get();
    const size_t in_n = std::min(in.size(), kMaxCall);
    const size_t out_n = std::min(out.size(), kMaxCall);
    s->next_in = reinterpret_cast<Bytef*>(const_cast<std::byte*>(in.data()));
    s->avail_in = static_cast<uInt>(in_n);
    s->next_out = reinterpret_cast<Bytef*>(out.data());
    s->avail_out = static_cast<uInt>(out_n);
    const int r = inflate(s, Z_NO_FLUSH);
    Step step{in_n - s->avail_in, out_n - s->avail_out, r == Z_STREAM_END};
    if (r != Z_OK && r != Z_STREAM_END && r != Z_BUF_ERROR) {
      return Status::Error(EIO,
                           std::string("corrupt deflate data: ") +
                               (s->msg != nullptr ? s->msg : "zlib error " + std::to_string(r)));
    }
    return step;
  }

  // inflate() sets data_type on every return: the unused bits of the last byte it took,
  // +64 in the final block, +128 between blocks (mode TYPE), +256 inside a block's codes.
  bool AtByteAlignedBlockBoundary() const override { return s_->data_type == 128; }
  std::optional<uint64_t> BitsHeldBetweenBlocks() const override { return std::nullopt; }

  class ZlibState final : public State {
   public:
    ZlibState() : s(std::make_unique<z_stream>()) { *s = z_stream{}; }
    ~ZlibState() override {
      if (ok) inflateEnd(s.get());
    }
    // inflate_state (about 7 KiB with its decode tables) plus the 32 KiB window.
    size_t memory() const override { return 40 << 10; }
    std::unique_ptr<z_stream> s;
    bool ok = false;
  };

  Result<std::unique_ptr<State>> Save() const override {
    auto state = std::make_unique<ZlibState>();
    if (inflateCopy(state->s.get(), s_.get()) != Z_OK) {
      return Status::Error(ENOMEM, "inflateCopy failed");
    }
    state->ok = true;
    return std::unique_ptr<State>(std::move(state));
  }

  Status Restore(const State& state) override {
    const auto* z = dynamic_cast<const ZlibState*>(&state);
    if (z == nullptr) return Status::Error(EINVAL, "not a zlib decoder state");
    if (ok_) inflateEnd(s_.get());
    ok_ = false;
    *s_ = z_stream{};
    if (inflateCopy(s_.get(), z->s.get()) != Z_OK) {
      return Status::Error(ENOMEM, "inflateCopy failed");
    }
    ok_ = true;
    return Status::Ok();
  }

  const char* name() const override { return "zlib"; }

 private:
  std::unique_ptr<z_stream> s_;  // heap-held: zlib keeps a pointer back to it
  bool ok_ = false;
};

#ifdef NPZFS_HAVE_ISAL
class IsalEngine final : public InflateEngine {
 public:
  IsalEngine() : s_(std::make_unique<inflate_state>()) { isal_inflate_init(s_.get()); }
  IsalEngine(const IsalEngine&) = delete;
  IsalEngine& operator=(const IsalEngine&) = delete;

  Status Reset(uint8_t bits, uint8_t byte, std::span<const std::byte> dict) override {
    inflate_state* s = s_.get();
    isal_inflate_init(s);  // crc_flag ISAL_DEFLATE: raw deflate, no checksum
    if (!dict.empty()) {
      // set_dict only copies the bytes into its own history buffer.
      auto* d = reinterpret_cast<uint8_t*>(const_cast<std::byte*>(dict.data()));
      if (isal_inflate_set_dict(s, d, static_cast<uint32_t>(dict.size())) != COMP_OK) {
        return Status::Error(EIO, "isal_inflate_set_dict failed");
      }
    }
    if (bits != 0) {  // the unused high bits of the byte before the input
      s->read_in = byte >> (8 - bits);
      s->read_in_length = bits;
    }
    return Status::Ok();
  }

  Result<Step> Inflate(std::span<const std::byte> in, std::span<std::byte> out) override {
    inflate_state* s = s_.get();
    const size_t in_n = std::min(in.size(), kMaxCall);
    const size_t out_n = std::min(out.size(), kMaxCall);
    s->next_in = reinterpret_cast<uint8_t*>(const_cast<std::byte*>(in.data()));
    s->avail_in = static_cast<uint32_t>(in_n);
    s->next_out = reinterpret_cast<uint8_t*>(out.data());
    s->avail_out = static_cast<uint32_t>(out_n);
    const int r = isal_inflate(s);
    Step step{in_n - s->avail_in, out_n - s->avail_out, s->block_state == ISAL_BLOCK_FINISH};
    // total_out is 32 bits and only feeds ISA-L's own look-back check: keep it from wrapping
    // past 4 GiB (the position is tracked by the caller).
    if (s->total_out > (1u << 31)) s->total_out = 1u << 30;
    if (r < 0) return Status::Error(EIO, "corrupt deflate data: " + IsalError(r));
    return step;
  }

  // Between blocks, no bits of the next byte read ahead, no input or output parked in the
  // state's own buffers. Out of input just after a block, ISA-L may already be in
  // ISAL_BLOCK_HDR: it gathers a header's bytes in tmp_in_buffer, so with none gathered it
  // has read nothing of the next header.
  bool AtByteAlignedBlockBoundary() const override {
    const inflate_state* s = s_.get();
    const bool between = s->block_state == ISAL_BLOCK_NEW_HDR || s->block_state == ISAL_BLOCK_HDR;
    return between && s->read_in_length == 0 && s->tmp_in_size == 0 &&
           s->tmp_out_valid == s->tmp_out_processed;
  }

  // Out of input in a header, ISA-L puts back the bits it had read of it and keeps the
  // header's unread bytes in tmp_in_buffer (read_header_stateful): both count as held.
  std::optional<uint64_t> BitsHeldBetweenBlocks() const override {
    const inflate_state* s = s_.get();
    const bool between = s->block_state == ISAL_BLOCK_NEW_HDR || s->block_state == ISAL_BLOCK_HDR;
    if (!between || s->tmp_out_valid != s->tmp_out_processed || s->read_in_length < 0) {
      return std::nullopt;
    }
    return uint64_t(s->read_in_length) + 8 * uint64_t(s->tmp_in_size);
  }

  // Everything before the history buffer, then the valid part of it: the struct holds no
  // pointers but next_in/next_out, which a restore points anew.
  class IsalState final : public State {
   public:
    size_t memory() const override { return bytes.size(); }
    std::string bytes;
  };
  static constexpr size_t kHead = offsetof(inflate_state, tmp_out_buffer);

  Result<std::unique_ptr<State>> Save() const override {
    auto state = std::make_unique<IsalState>();
    const size_t valid = static_cast<size_t>(std::max(0, s_->tmp_out_valid));
    state->bytes.resize(kHead + valid);
    std::memcpy(state->bytes.data(), s_.get(), kHead);
    std::memcpy(state->bytes.data() + kHead, s_->tmp_out_buffer, valid);
    return std::unique_ptr<State>(std::move(state));
  }

  Status Restore(const State& state) override {
    const auto* saved = dynamic_cast<const IsalState*>(&state);
    if (saved == nullptr || saved->bytes.size() < kHead ||
        saved->bytes.size() - kHead > sizeof(s_->tmp_out_buffer)) {
      return Status::Error(EINVAL, "not an ISA-L decoder state");
    }
    std::memcpy(s_.get(), saved->bytes.data(), kHead);
    std::memcpy(s_->tmp_out_buffer, saved->bytes.data() + kHead, saved->bytes.size() - kHead);
    s_->next_in = nullptr;
    s_->next_out = nullptr;
    return Status::Ok();
  }

  const char* name() const override { return "isa-l"; }

 private:
  static std::string IsalError(int r) {
    switch (r) {
      case ISAL_INVALID_BLOCK:
        return "invalid block";
      case ISAL_INVALID_SYMBOL:
        return "invalid symbol";
      case ISAL_INVALID_LOOKBACK:
        return "invalid distance too far back";
      default:
        return "isal_inflate error " + std::to_string(r);
    }
  }

  std::unique_ptr<inflate_state> s_;  // ~87 KiB: decode tables and a 64 KiB history buffer
};
#endif

}  // namespace

Result<std::unique_ptr<InflateEngine>> MakeZlibEngine() { return ZlibEngine::Create(); }

Result<std::unique_ptr<InflateEngine>> MakeFastEngine() {
#ifdef NPZFS_HAVE_ISAL
  return std::unique_ptr<InflateEngine>(std::make_unique<IsalEngine>());
#else
  return ZlibEngine::Create();
#endif
}

bool FastEngineIsIsal() {
#ifdef NPZFS_HAVE_ISAL
  return true;
#else
  return false;
#endif
}

}  // namespace npzfs
