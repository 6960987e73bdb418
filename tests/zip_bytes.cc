#include "tests/zip_bytes.h"

#include "core/base/byte_codec.h"
#include "core/zip/zip_format.h"

namespace npzfs::testing {

std::string BuildZip(const std::vector<ZipMemberSpec>& members) {
  constexpr uint16_t kDosTime = 0, kDosDate = (1 << 5) | 1;  // 1980-01-01 00:00
  std::string out, central;
  for (const ZipMemberSpec& m : members) {
    const uint64_t local_offset = out.size();
    auto common = [&](std::string& rec, size_t extra_length) {
      PutLe16(rec, zip::kVersionDeflate);  // version needed
      PutLe16(rec, 0);                     // flags
      PutLe16(rec, m.method);
      PutLe16(rec, kDosTime);
      PutLe16(rec, kDosDate);
      PutLe32(rec, m.crc32);
      PutLe32(rec, static_cast<uint32_t>(m.data.size()));
      PutLe32(rec, static_cast<uint32_t>(m.uncompressed_size));
      PutLe16(rec, static_cast<uint16_t>(m.name.size()));
      PutLe16(rec, static_cast<uint16_t>(extra_length));
    };
    PutLe32(out, zip::kLocalHeaderSig);
    common(out, 0);
    out += m.name;
    out += m.data;
    PutLe32(central, zip::kCentralHeaderSig);
    PutLe16(central, zip::kMadeByUnix | zip::kVersionDeflate);
    common(central, m.central_extra.size());
    PutLe16(central, 0);  // comment length
    PutLe16(central, 0);  // disk
    PutLe16(central, 0);  // internal attributes
    PutLe32(central, 0100644u << 16);
    PutLe32(central, static_cast<uint32_t>(local_offset));
    central += m.name;
    central += m.central_extra;
  }
  const uint64_t cd_offset = out.size();
  out += central;
  PutLe32(out, zip::kEndSig);
  PutLe16(out, 0);  // this disk
  PutLe16(out, 0);  // disk of the central directory
  PutLe16(out, static_cast<uint16_t>(members.size()));
  PutLe16(out, static_cast<uint16_t>(members.size()));
  PutLe32(out, static_cast<uint32_t>(central.size()));
  PutLe32(out, static_cast<uint32_t>(cd_offset));
  PutLe16(out, 0);  // comment length
  return out;
}

}  // namespace npzfs::testing
