// A deflated member's shared state: reads through the span cache, the first pass that
// learns checkpoints, and spans decoded from known checkpoints. The random-access design is
// explained at the top of core/read/inflate_index.cc; the lock order in deflated_member.h.
#include "core/read/deflated_member.h"

#include <zlib.h>

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "core/read/index_file.h"

namespace npzfs {

DeflatedMember::DeflatedMember(std::shared_ptr<ArchiveShared> shared, uint64_t id,
                               std::string member_path, const ZipEntry& entry, uint64_t spacing)
    : shared_(std::move(shared)),
      id_(id),
      member_path_(std::move(member_path)),
      entry_(entry),
      spacing_(std::max<uint64_t>(spacing, 2 * kDeflateWindow)),
      source_{shared_->fd.get(), entry.data_offset, entry.compressed_size,
              shared_->path + ": member " + member_path_} {
  checkpoints_.push_back(Checkpoint{});
}

Status DeflatedMember::Corrupt(const std::string& why) {
  Status s = Status::Error(EIO, source_.name + ": " + why);
  {
    std::lock_guard<std::mutex> lock(index_mu_);
    if (corrupt_.ok()) corrupt_ = s;
  }
  shared_->Log(s.message());
  return s;
}

bool DeflatedMember::complete() const {
  std::lock_guard<std::mutex> lock(index_mu_);
  return complete_;
}

size_t DeflatedMember::checkpoint_count() const {
  std::lock_guard<std::mutex> lock(index_mu_);
  return checkpoints_.size();
}

uint64_t DeflatedMember::index_bytes() const {
  std::lock_guard<std::mutex> lock(index_mu_);
  uint64_t total = 0;
  for (const Checkpoint& cp : checkpoints_) total += CheckpointRecordBytes(cp);
  return total;
}

DeflatedMember::Snapshot DeflatedMember::TakeSnapshot() const {
  std::lock_guard<std::mutex> lock(index_mu_);
  Snapshot snap;
  snap.checkpoints = checkpoints_;
  snap.complete = complete_;
  snap.version = version_;
  return snap;
}

void DeflatedMember::MarkSaved(uint64_t version) {
  std::lock_guard<std::mutex> lock(index_mu_);
  saved_version_ = std::max(saved_version_, version);
}

bool DeflatedMember::dirty() const {
  std::lock_guard<std::mutex> lock(index_mu_);
  return version_ != saved_version_;
}

void DeflatedMember::Load(std::vector<Checkpoint> checkpoints, bool complete) {
  std::lock_guard<std::mutex> frontier(frontier_mu_);
  std::lock_guard<std::mutex> lock(index_mu_);
  checkpoints_ = std::move(checkpoints);
  complete_ = complete;
  crc_so_far_ = 0;
  for (size_t k = 0; k + 1 < checkpoints_.size(); ++k) {
    crc_so_far_ = static_cast<uint32_t>(
        crc32_combine64(crc_so_far_, checkpoints_[k].span_crc,
                        static_cast<z_off64_t>(checkpoints_[k + 1].out - checkpoints_[k].out)));
  }
}

Result<std::unique_ptr<InflateStream>> DeflatedMember::StreamAt(const Checkpoint& cp) {
  if (std::unique_ptr<InflateStream> s = shared_->pool.Take(id_, cp.out)) return s;
  NPZ_ASSIGN_OR_RETURN(std::unique_ptr<InflateStream> s, InflateStream::Create(source_));
  NPZ_RETURN_IF_ERROR(s->Restore(cp));
  return s;
}

Result<size_t> DeflatedMember::ReadAt(uint64_t offset, std::span<std::byte> dest) {
  NPZ_RETURN_IF_ERROR(shared_->CheckUnchanged());
  if (shared_->verify == VerifyMode::kStrict) {
    // Nothing is served before the whole member's CRC-32 was checked.
    NPZ_RETURN_IF_ERROR(BuildIndex({}));
  }
  if (offset >= size() || dest.empty()) {
    std::lock_guard<std::mutex> lock(index_mu_);
    if (!corrupt_.ok()) return corrupt_;
    return size_t{0};
  }
  const size_t n = static_cast<size_t>(std::min<uint64_t>(dest.size(), size() - offset));
  size_t done = 0;
  while (done < n) {
    const uint64_t pos = offset + done;
    NPZ_ASSIGN_OR_RETURN(SpanRef ref, SpanAt(pos));
    const uint64_t within = pos - ref.start;
    if (within >= ref.span->size) {
      return Corrupt("the deflate data ends before the size in the directory");
    }
    const size_t take = static_cast<size_t>(std::min<uint64_t>(ref.span->size - within, n - done));
    std::memcpy(dest.data() + done, ref.span->data.get() + within, take);
    done += take;
  }
  return done;
}

Result<DeflatedMember::SpanRef> DeflatedMember::SpanAt(uint64_t pos) {
  while (true) {
    size_t k = 0;
    bool known = false;
    uint64_t start = 0;
    {
      std::lock_guard<std::mutex> lock(index_mu_);
      if (!corrupt_.ok()) return corrupt_;
      auto it = std::upper_bound(checkpoints_.begin(), checkpoints_.end(), pos,
                                 [](uint64_t p, const Checkpoint& cp) { return p < cp.out; });
      k = static_cast<size_t>(it - checkpoints_.begin()) - 1;
      known = complete_ || k + 1 < checkpoints_.size();
      start = checkpoints_[k].out;
    }
    if (known) {
      NPZ_ASSIGN_OR_RETURN(SpanPtr span, shared_->cache.GetOrProduce(SpanKey{id_, 0, k}, [&] {
        return ProduceKnownSpan(k);
      }));
      return SpanRef{std::move(span), start};
    }
    NPZ_ASSIGN_OR_RETURN(std::optional<SpanRef> ref, AdvanceFrontier(pos, true, {}));
    if (ref.has_value()) return *std::move(ref);
  }
}

Result<SpanPtr> DeflatedMember::ProduceKnownSpan(size_t k) {
  Checkpoint cp;
  uint64_t end = 0;
  {
    std::lock_guard<std::mutex> lock(index_mu_);
    cp = checkpoints_[k];
    end = k + 1 < checkpoints_.size() ? checkpoints_[k + 1].out : size();
  }
  const size_t len = static_cast<size_t>(end - cp.out);
  NPZ_ASSIGN_OR_RETURN(std::unique_ptr<InflateStream> stream, StreamAt(cp));
  NPZ_ASSIGN_OR_RETURN(auto buf, AllocateSpanBuffer(len));
  NPZ_ASSIGN_OR_RETURN(size_t got, stream->Read(buf.get(), len, /*stop_at_block=*/false));
  if (got != len) return Corrupt("the deflate data ends before the size in the directory");
  uint32_t crc = static_cast<uint32_t>(crc32_z(0, reinterpret_cast<const Bytef*>(buf.get()), len));
  if (crc != cp.span_crc && shared_->verify != VerifyMode::kOff) {
    return Corrupt("CRC-32 mismatch in the span at offset " + std::to_string(cp.out));
  }
  shared_->pool.Park(id_, std::move(stream));
  auto span = std::make_shared<Span>();
  span->data = std::move(buf);
  span->size = len;
  return SpanPtr(std::move(span));
}

Status DeflatedMember::BuildIndex(const std::function<void(uint64_t, uint64_t)>& progress) {
  while (true) {
    {
      std::lock_guard<std::mutex> lock(index_mu_);
      if (!corrupt_.ok()) return corrupt_;
      if (complete_) return Status::Ok();
    }
    Result<std::optional<SpanRef>> r = AdvanceFrontier(UINT64_MAX, false, progress);
    if (!r.ok()) return r.status();
  }
}

Result<std::optional<DeflatedMember::SpanRef>> DeflatedMember::AdvanceFrontier(
    uint64_t target, bool fill_cache, const std::function<void(uint64_t, uint64_t)>& progress) {
  std::unique_lock<std::mutex> frontier(frontier_mu_);
  std::unique_ptr<InflateStream> stream;
  std::optional<SpanRef> found;
  Status status;
  thread_local std::unique_ptr<std::byte[]> window =
      std::make_unique_for_overwrite<std::byte[]>(kDeflateWindow);
  const uint64_t total = size();
  while (true) {
    Checkpoint cp;
    size_t k = 0;
    {
      std::lock_guard<std::mutex> lock(index_mu_);
      if (!corrupt_.ok()) {
        status = corrupt_;
        break;
      }
      if (complete_) break;
      k = checkpoints_.size() - 1;
      if (target < checkpoints_[k].out) break;  // another thread got there: look up again
      cp = checkpoints_[k];
    }
    if (stream == nullptr || stream->resume_pos() != cp.out) {
      Result<std::unique_ptr<InflateStream>> s = StreamAt(cp);
      if (!s.ok()) {
        status = s.status();
        break;
      }
      stream = std::move(s).value();
    }
    // One byte more than the directory allows, to notice a member longer than it says.
    const uint64_t limit = total - std::min(total, cp.out) + 1;
    size_t cap = static_cast<size_t>(std::min<uint64_t>(spacing_ + spacing_ / 4, limit));
    Result<SpanBuffer> alloc = AllocateSpanBuffer(cap);
    if (!alloc.ok()) {
      status = alloc.status();
      break;
    }
    SpanBuffer buf = std::move(alloc).value();
    cap = std::min<size_t>(buf.get_deleter().capacity, static_cast<size_t>(limit));
    size_t len = 0;
    while (true) {
      if (len == cap) {  // a block ran past the expected span end (rare): grow
        if (cap >= limit) break;
        Result<SpanBuffer> grown =
            AllocateSpanBuffer(static_cast<size_t>(std::min<uint64_t>(cap + cap / 2, limit)));
        if (!grown.ok()) {
          status = grown.status();
          break;
        }
        std::memcpy(grown->get(), buf.get(), len);
        buf = std::move(grown).value();
        cap = std::min<size_t>(buf.get_deleter().capacity, static_cast<size_t>(limit));
      }
      // Z_BLOCK makes inflate return at every block end (~5% slower): use it only once
      // the span is long enough to end at the next boundary.
      const bool at_block = len >= spacing_;
      const size_t want = at_block ? cap - len : std::min<size_t>(cap, spacing_) - len;
      Result<size_t> got = stream->Read(buf.get() + len, want, at_block);
      if (!got.ok()) {
        status = got.status();
        break;
      }
      len += *got;
      if (stream->ended() || (stream->at_boundary() && len >= spacing_)) break;
    }
    if (!status.ok()) {
      if (status.code() == EIO) shared_->Log(status.message());
      break;
    }
    if (cp.out + len > total) {
      status = Corrupt("the deflate data is longer than the size in the directory");
      break;
    }
    std::optional<Checkpoint> next;
    if (!stream->ended()) {
      Checkpoint pos = stream->Position();
      const uint32_t wlen = stream->Window(window.get());
      Result<std::span<const std::byte>> ahead = stream->FillLookahead();
      if (!ahead.ok()) {
        status = ahead.status();
        break;
      }
      if (!ahead->empty() || !stream->ended()) {
        Result<std::string> sparse =
            MakeSparseWindow(source_, pos, std::span<const std::byte>(window.get(), wlen), *ahead);
        if (!sparse.ok()) {
          status = sparse.status();
          break;
        }
        pos.window = std::move(sparse).value();
        pos.window_size = wlen;
        next = std::move(pos);
      }
    }
    if (!next.has_value() && cp.out + len != total) {
      status = Corrupt("the deflate data ends before the size in the directory (" +
                       std::to_string(cp.out + len) + " of " + std::to_string(total) + " bytes)");
      break;
    }
    const uint32_t crc =
        static_cast<uint32_t>(crc32_z(0, reinterpret_cast<const Bytef*>(buf.get()), len));
    auto span = std::make_shared<Span>();
    span->data = std::move(buf);
    span->size = len;
    SpanPtr shared_span = std::move(span);
    // Cache first, publish after: a reader that finds the span known finds it cached.
    if (fill_cache) shared_->cache.Insert(SpanKey{id_, 0, k}, shared_span);
    bool crc_ok = true;
    uint32_t whole_crc = 0;
    {
      std::lock_guard<std::mutex> lock(index_mu_);
      checkpoints_[k].span_crc = crc;
      crc_so_far_ =
          static_cast<uint32_t>(crc32_combine64(crc_so_far_, crc, static_cast<z_off64_t>(len)));
      if (next.has_value()) {
        checkpoints_.push_back(std::move(*next));
      } else {
        complete_ = true;
        crc_ok = crc_so_far_ == entry_.crc32 || shared_->verify == VerifyMode::kOff;
        whole_crc = crc_so_far_;
      }
      ++version_;
    }
    first_pass_spans_.fetch_add(1);
    if (!crc_ok) {
      char buf_msg[64];
      std::snprintf(buf_msg, sizeof buf_msg, "CRC-32 mismatch (directory %08x, data %08x)",
                    entry_.crc32, whole_crc);
      status = Corrupt(buf_msg);
      break;
    }
    if (progress) progress(cp.out + len, total);
    if (target < cp.out + len || !next.has_value()) {
      found = SpanRef{std::move(shared_span), cp.out};
      break;
    }
  }
  frontier.unlock();
  if (status.ok() && stream != nullptr) shared_->pool.Park(id_, std::move(stream));
  if (!status.ok()) return status;
  return found;
}

}  // namespace npzfs
