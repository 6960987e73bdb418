#include "tests/sidecar_util.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include "npzfs/file_util.h"
#include "tests/test_util.h"

namespace npzfs::testing {

void ReadSidecar(const std::string& archive, const std::string& sidecar, Sidecar* out) {
  auto fd = OpenFile(archive, O_RDONLY);
  ASSERT_TRUE(fd.ok()) << fd.status().message();
  auto dir = ReadZipDirectory(fd->get(), archive);
  ASSERT_TRUE(dir.ok()) << dir.status().message();
  struct stat st;
  ASSERT_EQ(::fstat(fd->get(), &st), 0);
  out->fingerprint = IndexFingerprint{dir->archive_size,
                                      int64_t{st.st_mtim.tv_sec} * 1000000000 + st.st_mtim.tv_nsec,
                                      dir->cd_crc32, dir->entries.size()};
  std::vector<uint8_t> kinds(dir->entries.size(), 0);
  for (size_t e = 0; e < kinds.size(); ++e) {
    kinds[e] = uint8_t(dir->entries[e].method == 8 ? RecordKind::kDeflated : RecordKind::kStored);
  }
  auto records =
      DecodeIndexFile(ReadFileOrDie(sidecar), sidecar, out->fingerprint, dir->entries, kinds);
  ASSERT_TRUE(records.ok()) << records.status().message();
  out->entries = std::move(dir->entries);
  out->records = std::move(records).value();
}

}  // namespace npzfs::testing
