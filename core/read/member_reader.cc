// The reader handles: one per open file, a thin handle over the member's shared state
// (core/read/stored_member.h, core/read/deflated_member.h), plus the helpers built on
// ReadAt.
#include "npzfs/member_reader.h"

#include <algorithm>

#include "core/read/deflated_member.h"
#include "core/read/stored_member.h"
#include "npzfs/npy_reader.h"

namespace npzfs {
namespace {

class StoredReader : public MemberReader {
 public:
  explicit StoredReader(std::shared_ptr<StoredMember> member) : member_(std::move(member)) {}
  uint64_t size() const override { return member_->size(); }
  Result<size_t> ReadAt(uint64_t offset, std::span<std::byte> dest) override {
    NPZ_ASSIGN_OR_RETURN(ReadAnswer answer, member_->Read(offset, dest, /*may_splice=*/false));
    return answer.length;
  }
  Result<ReadAnswer> Read(uint64_t offset, std::span<std::byte> dest) override {
    return member_->Read(offset, dest, /*may_splice=*/true);
  }
  Status known_bad() const override { return member_->failure(); }

 private:
  std::shared_ptr<StoredMember> member_;
};

class DeflatedReader : public MemberReader {
 public:
  explicit DeflatedReader(std::shared_ptr<DeflatedMember> member) : member_(std::move(member)) {}
  uint64_t size() const override { return member_->size(); }
  Result<size_t> ReadAt(uint64_t offset, std::span<std::byte> dest) override {
    return member_->ReadAt(offset, dest);
  }
  Result<ReadAnswer> Read(uint64_t offset, std::span<std::byte> dest) override {
    return member_->ReadHeld(offset, dest.size());
  }
  Status known_bad() const override { return member_->corruption(); }

 private:
  std::shared_ptr<DeflatedMember> member_;
};

}  // namespace

std::shared_ptr<MemberReader> MakeStoredReader(std::shared_ptr<StoredMember> member) {
  return std::make_shared<StoredReader>(std::move(member));
}

std::shared_ptr<MemberReader> MakeDeflatedReader(std::shared_ptr<DeflatedMember> member) {
  return std::make_shared<DeflatedReader>(std::move(member));
}

Status ReadExactAt(MemberReader& reader, uint64_t offset, std::span<std::byte> dest,
                   const std::string& name) {
  while (!dest.empty()) {
    NPZ_ASSIGN_OR_RETURN(size_t n, reader.ReadAt(offset, dest));
    if (n == 0) {
      return Status::Error(EIO,
                           name + ": unexpected end of member at byte " + std::to_string(offset));
    }
    dest = dest.subspan(n);
    offset += n;
  }
  return Status::Ok();
}

Result<std::vector<std::byte>> ReadMemberFrames(MemberReader& reader, uint64_t start, uint64_t stop,
                                                const std::string& name) {
  ReadExactFn read_exact = [&](uint64_t offset, std::span<std::byte> dest) {
    return ReadExactAt(reader, offset, dest, name);
  };
  NPZ_ASSIGN_OR_RETURN(ParsedNpyHeader parsed, ReadNpyHeaderFrom(reader.size(), read_exact, name));
  return ReadFramesFrom(parsed.header, parsed.length, start, stop, read_exact, name);
}

}  // namespace npzfs
