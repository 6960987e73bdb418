#include "core/read/decode_stream.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "core/base/crc32.h"
#include "npzfs/file_util.h"

namespace npzfs {
namespace {

constexpr size_t kInputBufferSize = 128 * 1024;

}  // namespace

DecodeStream::DecodeStream(DeflateSource source, std::unique_ptr<InflateEngine> engine, PassKey)
    : src_(std::move(source)),
      engine_(std::move(engine)),
      in_buf_(std::make_unique_for_overwrite<std::byte[]>(kInputBufferSize)),
      in_end_(src_.compressed_size) {}

Result<std::unique_ptr<DecodeStream>> DecodeStream::Create(DeflateSource source) {
  NPZ_ASSIGN_OR_RETURN(std::unique_ptr<InflateEngine> engine, MakeFastEngine());
  return Create(std::move(source), std::move(engine));
}

std::unique_ptr<DecodeStream> DecodeStream::Create(DeflateSource source,
                                                   std::unique_ptr<InflateEngine> engine) {
  return std::make_unique<DecodeStream>(std::move(source), std::move(engine), PassKey());
}

Status DecodeStream::Restore(const Checkpoint& cp, std::optional<uint32_t> crc_before) {
  if (!cp.at_block_start()) {
    return Status::Error(EINVAL, src_.name + ": checkpoint inside a block");
  }
  thread_local std::unique_ptr<std::byte[]> dict =
      std::make_unique_for_overwrite<std::byte[]>(kDeflateWindow);
  NPZ_RETURN_IF_ERROR(ExpandWindow(src_, cp, dict.get()));
  return RestoreAt(cp.bit(), std::span(dict.get(), cp.window_size), cp.out, crc_before);
}

Status DecodeStream::RestoreAt(uint64_t bit, std::span<const std::byte> window, uint64_t out,
                               std::optional<uint32_t> crc_before) {
  const uint64_t in = (bit + 7) / 8;
  const auto bits = static_cast<uint8_t>(in * 8 - bit);
  NPZ_ASSIGN_OR_RETURN(uint8_t byte, ByteBefore(src_, in, bits));
  Status s = engine_->Reset(bits, byte, window);
  if (!s.ok()) return Status::Error(EIO, src_.name + ": corrupt checkpoint: " + s.message());
  in_off_ = in_avail_ = 0;
  in_next_ = in;
  in_end_ = src_.compressed_size;
  soft_end_ = false;
  out_pos_ = out;
  ended_ = false;
  crc_ = crc_before;
  return Status::Ok();
}

void DecodeStream::Rebase(uint64_t out, std::optional<uint32_t> crc) {
  out_pos_ = out;
  crc_ = crc;
}

Status DecodeStream::Restore(const Snapshot& snap) {
  NPZ_RETURN_IF_ERROR(engine_->Restore(*snap.state));
  in_off_ = in_avail_ = 0;
  in_next_ = snap.in;
  in_end_ = src_.compressed_size;
  soft_end_ = false;
  out_pos_ = snap.out;
  ended_ = false;
  crc_ = snap.crc;
  return Status::Ok();
}

Result<DecodeStream::Snapshot> DecodeStream::TakeSnapshot() const {
  Snapshot snap;
  NPZ_ASSIGN_OR_RETURN(std::unique_ptr<InflateEngine::State> state, engine_->Save());
  snap.state = std::move(state);
  snap.in = in_next_ - in_avail_;
  snap.out = out_pos_;
  snap.crc = crc_;
  return snap;
}

void DecodeStream::LimitInput(uint64_t end) { in_end_ = std::min(end, src_.compressed_size); }

bool DecodeStream::StopBefore(uint64_t bit) {
  const uint64_t end = (bit + 7) / 8;
  if (in_next_ > end || end > src_.compressed_size) return false;
  in_end_ = end;
  soft_end_ = true;
  return true;
}

bool DecodeStream::StopsAt(uint64_t bit) const {
  if (!soft_end_ || ended_ || in_avail_ != 0 || in_next_ != in_end_) return false;
  const std::optional<uint64_t> held = engine_->BitsHeldBetweenBlocks();
  return held.has_value() && in_end_ * 8 - *held == bit;
}

void DecodeStream::LiftLimit() {
  in_end_ = src_.compressed_size;
  soft_end_ = false;
}

Status DecodeStream::Refill() {
  const size_t want = static_cast<size_t>(
      std::min<uint64_t>(kInputBufferSize, in_end_ - std::min(in_next_, in_end_)));
  NPZ_RETURN_IF_ERROR(
      PreadExact(src_.fd, in_buf_.get(), want, src_.data_offset + in_next_, src_.name));
  in_next_ += want;
  in_off_ = 0;
  in_avail_ = want;
  return Status::Ok();
}

Result<InflateEngine::Step> DecodeStream::Advance(std::span<std::byte> out) {
  Result<InflateEngine::Step> step =
      engine_->Inflate(std::span<const std::byte>(in_buf_.get() + in_off_, in_avail_), out);
  if (!step.ok()) return step;
  in_off_ += step->consumed;
  in_avail_ -= step->consumed;
  if (step->ended) ended_ = true;
  return step;
}

Result<size_t> DecodeStream::Read(std::byte* out, size_t n) {
  size_t done = 0;
  while (done < n && !ended_) {
    if (in_avail_ == 0 && in_next_ < in_end_) NPZ_RETURN_IF_ERROR(Refill());
    Result<InflateEngine::Step> step = Advance(std::span<std::byte>(out + done, n - done));
    if (!step.ok()) return Status::Error(EIO, src_.name + ": " + step.status().message());
    done += step->produced;
    if (step->consumed == 0 && step->produced == 0 && !ended_) {
      if (in_avail_ == 0 && in_next_ >= in_end_) {
        if (soft_end_) break;  // StopBefore's limit
        if (in_end_ < src_.compressed_size) {
          return Status::Error(EIO, src_.name +
                                        ": corrupt seek table: a chunk's compressed bytes end "
                                        "before its uncompressed size is reached");
        }
        return Status::Error(EIO, src_.name +
                                      ": corrupt deflate data: compressed data ends "
                                      "before the deflate stream does");
      }
      if (in_avail_ > 0) {
        return Status::Error(EIO, src_.name + ": corrupt deflate data: the decoder is stuck");
      }
    }
  }
  if (crc_.has_value()) crc_ = Crc32(*crc_, out, done);
  out_pos_ += done;
  return done;
}

Status DecodeStream::FinishChunk(bool last) {
  const std::string where =
      src_.name + ": corrupt seek table: the chunk ending at " + std::to_string(out_pos_) + " ";
  std::byte scratch[64];
  while (!ended_) {
    if (in_avail_ == 0 && in_next_ < in_end_) NPZ_RETURN_IF_ERROR(Refill());
    if (in_avail_ == 0) break;  // everything up to the limit was given to the engine
    Result<InflateEngine::Step> step = Advance(std::span(scratch));
    if (!step.ok()) return Status::Error(EIO, where + "continues into bad deflate data");
    if (step->produced > 0) return Status::Error(EIO, where + "holds more data than that");
    if (step->consumed == 0) break;  // the engine takes no more of it
  }
  if (in_avail_ > 0 || in_next_ < in_end_) {
    return Status::Error(EIO, where + "has compressed bytes after its data");
  }
  if (last && !ended_) return Status::Error(EIO, where + "does not end the deflate stream");
  if (!last && (ended_ || !engine_->AtByteAlignedBlockBoundary())) {
    return Status::Error(EIO, where + "does not end on a block boundary");
  }
  return Status::Ok();
}

Result<size_t> DecodeStream::Skip(uint64_t n) {
  thread_local std::unique_ptr<std::byte[]> sink =
      std::make_unique_for_overwrite<std::byte[]>(kInputBufferSize);
  uint64_t done = 0;
  while (done < n && !ended_) {
    const size_t want = static_cast<size_t>(std::min<uint64_t>(kInputBufferSize, n - done));
    NPZ_ASSIGN_OR_RETURN(size_t got, Read(sink.get(), want));
    done += got;
    if (got < want) break;  // the end, or StopBefore's limit
  }
  return static_cast<size_t>(done);
}

}  // namespace npzfs
