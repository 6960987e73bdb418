// Reading an archive's sidecar index in tests, checked as a mount checks it.
#pragma once

#include <string>
#include <vector>

#include "core/read/index_file.h"
#include "npzfs/zip_directory.h"

namespace npzfs::testing {

struct Sidecar {
  IndexFingerprint fingerprint;   // of the archive as it is on disk
  std::vector<ZipEntry> entries;  // the archive's central directory
  std::vector<IndexRecord> records;
};

// Decodes `sidecar`, the index of `archive` (every deflated entry may have a deflated
// record, every other a stored one). Records a fatal test failure if the archive's
// directory cannot be read or the sidecar does not decode against it.
void ReadSidecar(const std::string& archive, const std::string& sidecar, Sidecar* out);

}  // namespace npzfs::testing
