#include "tests/archive_test_util.h"

#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <zip.h>
#include <zlib.h>

#include <algorithm>
#include <memory>

#include "tests/test_util.h"

namespace npzfs::testing {

Result<ZipDirectory> ReadDir(const std::string& path) {
  NPZ_ASSIGN_OR_RETURN(UniqueFd fd, OpenFile(path, O_RDONLY));
  return ReadZipDirectory(fd.get(), path);
}

std::vector<std::string> ListDir(const std::string& dir) {
  std::vector<std::string> names;
  std::unique_ptr<DIR, int (*)(DIR*)> d(opendir(dir.c_str()), closedir);
  if (!d) return names;
  while (dirent* e = readdir(d.get())) {
    std::string n = e->d_name;
    if (n != "." && n != "..") names.push_back(n);
  }
  std::sort(names.begin(), names.end());
  return names;
}

uint32_t Crc(const std::string& bytes) {
  return static_cast<uint32_t>(
      crc32_z(0, reinterpret_cast<const Bytef*>(bytes.data()), bytes.size()));
}

NewMember FromBytes(const std::string& name, std::string bytes) {
  NewMember m;
  m.name = name;
  m.pieces.push_back(MemberPiece{std::move(bytes)});
  return m;
}

NewMember FromFile(const std::string& name, const UniqueFd& fd, const std::string& file) {
  auto size = FileSize(fd.get(), file);
  EXPECT_TRUE(size.ok());
  NewMember m;
  m.name = name;
  MemberPiece p;
  p.fd = fd.get();
  p.offset = 0;
  p.length = size.ok() ? *size : 0;
  p.source = file;
  m.pieces.push_back(p);
  return m;
}

std::string VerifyWithPython(const std::string& archive, const std::string& expected_dir) {
  return RunPython(R"(
import numpy as np, zipfile, subprocess, os, sys
a, d = ')" + archive +
                   "', '" + expected_dir + R"('
with zipfile.ZipFile(a) as zf:
    assert zf.testzip() is None, 'bad CRC'
    names = zf.namelist()
with np.load(a) as npz:
    for k in npz.files:
        p = os.path.join(d, k + '.npy')
        if os.path.exists(p):
            assert np.array_equal(npz[k], np.load(p)), k
for tool in (['unzip', '-tq'], ['zipinfo', '-v']):
    r = subprocess.run(tool + [a], capture_output=True)
    assert r.returncode == 0, (tool, r.stdout[-2000:], r.stderr)
print(','.join(names))
)");
}

int64_t ReadAllWithLibzip(const std::string& archive, uint64_t max_member_bytes) {
  int err = 0;
  zip_t* z = zip_open(archive.c_str(), ZIP_RDONLY | ZIP_CHECKCONS, &err);
  if (z == nullptr) {
    ADD_FAILURE() << "libzip cannot open " << archive << " (error " << err << ")";
    return -1;
  }
  const zip_int64_t n = zip_get_num_entries(z, 0);
  std::string buf(1 << 16, '\0');
  for (zip_int64_t i = 0; i < n; ++i) {
    zip_stat_t st;
    EXPECT_EQ(zip_stat_index(z, static_cast<zip_uint64_t>(i), 0, &st), 0);
    if (st.size > max_member_bytes) continue;
    zip_file_t* f = zip_fopen_index(z, static_cast<zip_uint64_t>(i), 0);
    if (f == nullptr) {
      ADD_FAILURE() << archive << ": libzip cannot open entry " << i;
      continue;
    }
    zip_uint64_t total = 0;
    zip_int64_t got;
    while ((got = zip_fread(f, buf.data(), buf.size())) > 0)
      total += static_cast<zip_uint64_t>(got);
    EXPECT_EQ(got, 0) << archive << ": libzip read error in " << st.name;  // CRC checked at end
    EXPECT_EQ(total, st.size) << st.name;
    zip_fclose(f);
  }
  zip_discard(z);
  return n;
}

ScopedTmpfs::ScopedTmpfs(const std::string& dir, const std::string& options) : dir_(dir) {
  mkdir(dir.c_str(), 0755);
  const bool ro = options.find("ro") == 0;
  mounted_ = mount("tmpfs", dir.c_str(), "tmpfs", ro ? MS_RDONLY : 0,
                   ro ? "size=1m" : options.c_str()) == 0;
}

ScopedTmpfs::~ScopedTmpfs() {
  if (mounted_) umount2(dir_.c_str(), MNT_DETACH);
}

}  // namespace npzfs::testing
