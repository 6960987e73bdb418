#include "core/write/background_deflater.h"

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <chrono>

#include "core/base/crc32.h"
#include "core/zip/chunked_deflater.h"

namespace npzfs {
namespace {

constexpr auto kPollInterval = std::chrono::milliseconds(50);
// Below the writers' priority: on a busy machine the frames arriving come first.
constexpr int kNiceIncrement = 10;

}  // namespace

Status BackgroundDeflater::DataSyncSpool(int fd, const std::string& path) {
  if (::fdatasync(fd) != 0) return ErrnoStatus(errno, path, "fdatasync failed");
  return Status::Ok();
}

BackgroundDeflater::BackgroundDeflater(int level, uint64_t chunk_size, SpoolLogFn log,
                                       SyncSpoolFn sync_spool)
    : level_(level),
      chunk_size_(chunk_size),
      log_(std::move(log)),
      sync_spool_(std::move(sync_spool)) {
  thread_ = std::thread([this] { Run(); });
}

BackgroundDeflater::~BackgroundDeflater() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  thread_.join();
  for (auto& e : entries_) {
    if (e->shadow && !e->disabled) (void)e->shadow->Sync();
  }
}

void BackgroundDeflater::Track(std::shared_ptr<GrowingMember> member) {
  {
    std::lock_guard lock(mu_);
    for (const auto& e : entries_) {
      if (e->member == member) return;
    }
    auto e = std::make_unique<Entry>();
    e->member = std::move(member);
    entries_.push_back(std::move(e));
  }
  wake_.notify_all();
}

std::unique_ptr<DeflateShadow> BackgroundDeflater::Take(const GrowingMember* member) {
  std::unique_lock lock(mu_);
  for (auto it = entries_.begin(); it != entries_.end(); ++it) {
    if ((*it)->member.get() != member) continue;
    Entry* e = it->get();
    e->taken = true;  // without it the thread would pick this member again at once
    changed_.wait(lock, [&] { return busy_ != e; });
    std::unique_ptr<DeflateShadow> shadow = e->disabled ? nullptr : std::move(e->shadow);
    entries_.erase(it);
    return shadow;
  }
  return nullptr;
}

void BackgroundDeflater::Wake() { wake_.notify_all(); }

void BackgroundDeflater::WaitUntilIdle() {
  std::unique_lock lock(mu_);
  idle_ = false;
  wake_.notify_all();
  changed_.wait(lock, [&] { return idle_ || stop_; });
}

BackgroundDeflater::Work BackgroundDeflater::PickWork() {
  for (auto& e : entries_) {
    if (e->disabled || e->taken) continue;
    // A .npy member has data only once its layout (and so its header) is known.
    const ReaderSnapshot snap = e->member->TakeSnapshot();
    if (e->member->is_npy() && snap.header.empty()) continue;
    const uint64_t data = snap.size - snap.header.size();
    const uint64_t done = e->shadow ? e->shadow->chunk_count() : 0;
    if ((done + 1) * chunk_size_ <= data) return Work{e.get(), snap.header.size(), data};
  }
  return Work{};
}

Status BackgroundDeflater::DeflateNextChunk(const Work& w, std::string& in, std::string& out) {
  Entry& e = *w.entry;
  if (!e.shadow) {
    // The first chunk (or the first after a restart): open or resume the shadow, with a way
    // to sync the spool file, so that the shadow's records never outlive the spool bytes they
    // cover (see "Durability" in the header).
    DeflateShadow::SourceSync sync_source = [member = e.member, fd = e.member->spool_fd(),
                                             sync = sync_spool_, dir_synced = false]() mutable {
      const std::string path = member->spool_path();
      if (!dir_synced) {
        // A new spool file's name is durable only once its directory is: a record must not
        // survive a spool file that did not.
        NPZ_RETURN_IF_ERROR(FsyncParentDir(path));
        dir_synced = true;
      }
      return sync(fd, path);
    };
    NPZ_ASSIGN_OR_RETURN(e.shadow, DeflateShadow::Open(e.member->spool_path(), level_, chunk_size_,
                                                       w.data_bytes, true, std::move(sync_source)));
    if ((e.shadow->chunk_count() + 1) * chunk_size_ > w.data_bytes) return Status::Ok();
  }
  const uint64_t index = e.shadow->chunk_count();
  in.resize(chunk_size_);
  NPZ_ASSIGN_OR_RETURN(
      size_t got, e.member->ReadAt(w.header_length + index * chunk_size_,
                                   std::span(reinterpret_cast<std::byte*>(in.data()), in.size())));
  if (got != in.size()) {
    return Status::Error(EIO, e.member->spool_path() + ": chunk " + std::to_string(index) +
                                  " shorter than its visible size");
  }
  NPZ_RETURN_IF_ERROR(DeflateChunk(level_, in, /*final=*/false, &out));
  const uint32_t crc = Crc32(0, in.data(), in.size());
  return e.shadow->Append(out, crc);
}

void BackgroundDeflater::Disable(Entry& e, const Status& why) {
  e.disabled = true;
  e.shadow.reset();
  Status removed = DeflateShadow::Remove(e.member->spool_path());
  if (log_) {
    log_(e.member->name() + ": background deflate stopped (" + why.message() +
         "); the spool file is intact and finalize will deflate it" +
         (removed.ok() ? "" : " (" + removed.message() + ")"));
  }
}

Status BackgroundDeflater::SyncIdleShadows(std::unique_lock<std::mutex>& lock) {
  // mu_ is released around each Sync, and meanwhile Track may grow entries_ and Take may erase
  // from it: no iterator into entries_ survives an unlock. The entries themselves are heap
  // objects, so collect pointers now and, after every unlock, sync one only if it is still
  // in entries_ (Take frees an entry only while it is not busy_). An address reused by an
  // entry Tracked meanwhile names a live entry, which is as fine to sync.
  std::vector<Entry*> to_sync;
  for (const auto& e : entries_) {
    if (e->shadow && !e->disabled && !e->taken) to_sync.push_back(e.get());
  }
  for (Entry* entry : to_sync) {
    const bool tracked =
        std::any_of(entries_.begin(), entries_.end(),
                    [&](const std::unique_ptr<Entry>& e) { return e.get() == entry; });
    if (!tracked || !entry->shadow || entry->disabled || entry->taken) continue;
    // busy_: Take waits for this Sync exactly as it waits for a chunk in progress.
    busy_ = entry;
    lock.unlock();
    Status st = entry->shadow->Sync();
    lock.lock();
    busy_ = nullptr;
    changed_.notify_all();
    if (!st.ok()) Disable(*entry, st);
  }
  return Status::Ok();
}

void BackgroundDeflater::Run() {
  ::setpriority(PRIO_PROCESS, static_cast<id_t>(::syscall(SYS_gettid)), kNiceIncrement);
  std::string in, out;
  std::unique_lock lock(mu_);
  while (!stop_) {
    const Work w = PickWork();
    if (w.entry == nullptr) {
      (void)SyncIdleShadows(lock);
      if (PickWork().entry != nullptr) continue;  // data arrived while syncing
      idle_ = true;
      changed_.notify_all();
      wake_.wait_for(lock, kPollInterval);
      continue;
    }
    idle_ = false;
    busy_ = w.entry;
    lock.unlock();
    Status st = DeflateNextChunk(w, in, out);
    lock.lock();
    busy_ = nullptr;
    changed_.notify_all();
    if (!st.ok()) Disable(*w.entry, st);
  }
  idle_ = true;
  changed_.notify_all();
}

}  // namespace npzfs
