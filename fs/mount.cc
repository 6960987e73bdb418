#include "fs/mount.h"

#include <string_view>

#include "core/npy/frame_layout.h"
#include "fs/log.h"
#include "npzfs/npy_reader.h"

namespace npzfs::fs {

FileHandle::~FileHandle() {
  if (writer) {
    growing->EndWrite(&session);
    if (writers != nullptr) writers->fetch_sub(1);
  }
}

FileHandle* HandleTable::Add(std::unique_ptr<FileHandle> handle) {
  FileHandle* raw = handle.get();
  std::lock_guard lock(mu_);
  handles_.emplace(raw, std::move(handle));
  return raw;
}

std::unique_ptr<FileHandle> HandleTable::Remove(FileHandle* handle) {
  std::lock_guard lock(mu_);
  auto it = handles_.find(handle);
  if (it == handles_.end()) return nullptr;
  std::unique_ptr<FileHandle> owned = std::move(it->second);
  handles_.erase(it);
  return owned;
}

void HandleTable::Clear() {
  std::unordered_map<FileHandle*, std::unique_ptr<FileHandle>> handles;
  {
    std::lock_guard lock(mu_);
    handles.swap(handles_);
  }
  if (!handles.empty()) {
    LogInfo("closed " + std::to_string(handles.size()) +
            " file(s) the kernel did not release before the session ended");
  }
}

size_t HandleTable::size() const {
  std::lock_guard lock(mu_);
  return handles_.size();
}

void SpoolSlot::StartBackgroundLocked() {
  if (spool_ != nullptr && background_level_ && threads_allowed_) {
    spool_->StartBackgroundDeflate(*background_level_);
  }
}

void SpoolSlot::AllowThreads() {
  std::lock_guard lock(mu_);
  threads_allowed_ = true;
  StartBackgroundLocked();
}

void SpoolSlot::Set(std::unique_ptr<Spool> spool) {
  std::lock_guard lock(mu_);
  spool_ = std::move(spool);
  StartBackgroundLocked();
}

Spool* SpoolSlot::get() const {
  std::lock_guard lock(mu_);
  return spool_.get();
}

Result<Spool*> SpoolSlot::GetOrCreate(const std::string& dir, const std::string& archive_path,
                                      WriteOptions::AppendMode mode) {
  std::lock_guard lock(mu_);
  if (spool_ != nullptr) return spool_.get();
  // Accepting frames that finalize cannot add would only move the failure to the unmount.
  if (Status can = CheckCanAppend(archive_path, mode); !can.ok()) {
    if (!failure_logged_) {
      failure_logged_ = true;
      LogError("new files cannot be created: " + can.message() +
               "; archived members are still served. Mount with -o ro if none are to be "
               "added, or give yourself write permission and mount again");
    }
    return Status::Error(EROFS, "no new members: " + can.message());
  }
  auto spool = Spool::Open(
      dir, [](const std::string& line) { LogInfo(line); }, archive_path,
      background_level_.value_or(Spool::kStoredLevel));
  if (spool.ok()) {
    nospace_logged_ = false;
    spool_ = std::move(spool).value();
    StartBackgroundLocked();
    LogInfo("spool for new members: " + dir);
    return spool_.get();
  }
  const std::string why = spool.status().message();
  if (const int code = spool.status().code(); code == ENOSPC || code == EDQUOT) {
    // For now only: the next create tries again, and once there is room it works.
    if (!nospace_logged_) {
      nospace_logged_ = true;
      LogError("new files cannot be created until there is room: " + why +
               " (free space on the spool's filesystem; archived members are still served)");
    }
    return Status::Error(code, "no spool for new members: " + why);
  }
  if (!failure_logged_) {
    failure_logged_ = true;
    LogError("new files cannot be created: " + why +
             "; archived members are still served. Mount with -o spool=DIR (a directory "
             "npzfs can make or write: its parent must exist) to add new members, or with -o "
             "ro if none are to be added");
  }
  return Status::Error(EROFS, "no spool for new members: " + why);
}

std::optional<NpyHeader> ArchivedLayouts::Get(Archive& archive, size_t member_index) {
  {
    std::lock_guard lock(mu_);
    if (auto it = layouts_.find(member_index); it != layouts_.end()) return it->second;
  }
  std::optional<NpyHeader> layout;
  const ArchiveMember& member = archive.members()[member_index];
  if (IsNpyName(member.path) && member.open_errno == 0) {
    auto reader = archive.OpenMember(member_index);
    if (reader.ok()) {
      std::shared_ptr<MemberReader> r = *reader;
      const std::string name = archive.path() + ": member " + member.path;
      auto parsed = ReadNpyHeaderFrom(
          r->size(),
          [&](uint64_t offset, std::span<std::byte> dest) {
            return ReadExactAt(*r, offset, dest, name);
          },
          name);
      if (parsed.ok()) layout = parsed->header;
    }
  }
  std::lock_guard lock(mu_);
  layouts_.emplace(member_index, layout);
  return layout;
}

const std::string& Mount::result_path() const {
  static const std::string kNone;
  return writable() ? runtime.result : kNone;
}

}  // namespace npzfs::fs
