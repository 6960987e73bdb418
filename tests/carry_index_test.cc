// Tests of Archive::CarryIndexForward: the saved index survives an in-place append of new
// members (finalize, npz add), so the next open needs no first pass for the old members.
#include <gtest/gtest.h>

#include <filesystem>
#include <mutex>
#include <random>
#include <string>

#include "npzfs/archive.h"
#include "npzfs/archive_writer.h"
#include "tests/test_util.h"

namespace npzfs {
namespace {

using testing::ReadFileOrDie;
using testing::TempDir;

class CarryIndexTest : public ::testing::Test {
 protected:
  void SetUp() override {
    testing::RunPython(R"PY(
import numpy as np, zipfile
D = ')PY" + dir_.path() +
                       R"PY('
rng = np.random.default_rng(41)
t = np.arange(1_500_000)
adc = (1000 * np.sin(t / 500.0) + rng.normal(0, 30, t.size)).astype('<i2')
np.savez_compressed(D + '/data.npz', adc=adc, small=np.arange(5))
with zipfile.ZipFile(D + '/data.npz', 'a') as z:
    z.writestr('raw.bin', rng.integers(0, 255, 2_500_000, dtype='u1').tobytes())
with zipfile.ZipFile(D + '/data.npz') as z:
    for n in z.namelist():
        open(D + '/ref_' + n, 'wb').write(z.read(n))
)PY");
  }

  ArchiveOptions Options() {
    ArchiveOptions o;
    o.checkpoint_spacing = 128 << 10;
    o.log = [this](const std::string& line) {
      std::lock_guard<std::mutex> lock(log_mu_);
      log_ += line + "\n";
    };
    return o;
  }
  std::string Log() {
    std::lock_guard<std::mutex> lock(log_mu_);
    return log_;
  }

  // Indexes every member (first passes, the verify pass), saves the sidecar, then appends
  // `name` in place and carries the index forward. Returns CarryIndexForward's status.
  Status IndexAppendAndCarry(const std::string& name, const std::string& bytes) {
    auto a = Archive::Open(Path(), Options());
    EXPECT_TRUE(a.ok());
    for (size_t i = 0; i < (*a)->members().size(); ++i) {
      EXPECT_TRUE((*a)->VerifyMember(i).ok());
    }
    EXPECT_TRUE((*a)->SaveIndex().ok());
    WriteOptions wo;
    wo.reject_existing_names = false;
    wo.compress_level = 6;
    NewMember member;
    member.name = name;
    member.pieces.push_back(MemberPiece{bytes});
    Status appended = AppendToArchive(Path(), {member}, wo);
    EXPECT_TRUE(appended.ok()) << appended.message();
    return (*a)->CarryIndexForward();
  }

  std::string Path() const { return dir_.Join("data.npz"); }

  TempDir dir_;
  std::mutex log_mu_;
  std::string log_;
};

TEST_F(CarryIndexTest, OldMembersKeepTheirIndexAfterAnInPlaceAppend) {
  ASSERT_TRUE(IndexAppendAndCarry("new.bin", std::string(300000, 'n')).ok());
  auto a = Archive::Open(Path(), Options());
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(Log().find("ignored"), std::string::npos) << "a stale sidecar:\n" << Log();
  const size_t adc = *(*a)->Find("adc.npy");
  EXPECT_EQ((*a)->index_state(adc), IndexState::kComplete);
  const std::string ref = ReadFileOrDie(dir_.Join("ref_adc.npy"));
  auto r = *(*a)->OpenMember(adc);
  std::mt19937_64 rng(6);
  std::string buf;
  for (int n = 0; n < 50; ++n) {
    const uint64_t off = rng() % ref.size();
    buf.assign(std::min<size_t>(100000, ref.size() - off), '\0');
    ASSERT_TRUE(r->ReadAt(off, std::as_writable_bytes(std::span(buf))).ok());
    ASSERT_TRUE(buf == ref.substr(off, buf.size()));
  }
  EXPECT_EQ((*a)->first_pass_spans(adc), 0u) << "the old member needed a first pass";
  EXPECT_EQ((*a)->fast_chunks(adc), 0u);
  // The stored member's verified record came along: a read checks one chunk, no pass.
  const size_t raw = *(*a)->Find("raw.bin");
  std::byte b[16];
  ASSERT_TRUE((*(*a)->OpenMember(raw))->ReadAt(100, b).ok());
  EXPECT_EQ((*a)->verify_bytes(raw), uint64_t{1} << 20);
  // The new member reads too.
  std::string fresh(300000, '\0');
  auto n = (*(*a)->OpenMember(*(*a)->Find("new.bin")))
               ->ReadAt(0, std::as_writable_bytes(std::span(fresh)));
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(fresh, std::string(300000, 'n'));
}

TEST_F(CarryIndexTest, ARecordOfAMemberHiddenByANewOneOfTheSameNameIsDropped) {
  ASSERT_TRUE(IndexAppendAndCarry("adc.npy", std::string(1000, 'x')).ok());
  auto a = Archive::Open(Path(), Options());
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(Log().find("ignored"), std::string::npos) << Log();
  std::string got(1000, '\0');
  auto r = *(*a)->OpenMember(*(*a)->Find("adc.npy"));
  ASSERT_TRUE(r->ReadAt(0, std::as_writable_bytes(std::span(got))).ok());
  EXPECT_EQ(got, std::string(1000, 'x'));
  // The stored member's record is still there.
  const size_t raw = *(*a)->Find("raw.bin");
  std::byte b[16];
  ASSERT_TRUE((*(*a)->OpenMember(raw))->ReadAt(100, b).ok());
  EXPECT_EQ((*a)->verify_bytes(raw), uint64_t{1} << 20);
}

TEST_F(CarryIndexTest, WithTheIndexOffNothingIsWritten) {
  ArchiveOptions o = Options();
  o.index_enabled = false;
  auto a = Archive::Open(Path(), o);
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE((*a)->BuildIndex(*(*a)->Find("adc.npy")).ok());
  ASSERT_TRUE((*a)->CarryIndexForward().ok());
  EXPECT_FALSE(std::filesystem::exists((*a)->IndexPath()));
}

TEST_F(CarryIndexTest, AnArchiveThatIsNoLongerAZipIsAnErrorAndTheOldSidecarStays) {
  auto a = Archive::Open(Path(), Options());
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE((*a)->BuildIndex(*(*a)->Find("adc.npy")).ok());
  ASSERT_TRUE((*a)->SaveIndex().ok());
  const std::string before = ReadFileOrDie((*a)->IndexPath());
  testing::WriteFileOrDie(Path(), "not a zip any more");
  Status s = (*a)->CarryIndexForward();
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("data.npz"), std::string::npos) << s.message();
  EXPECT_EQ(ReadFileOrDie((*a)->IndexPath()), before);
}

}  // namespace
}  // namespace npzfs
