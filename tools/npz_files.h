// File helpers shared by the `npz` subcommands: validated .npy inputs and member-key rules.
// (Outputs are written with AtomicFile, core/base/atomic_file.h.)
//
// NpyInput owns the open input fd (pack and add pass file ranges of it to the archive
// writer, so the data is streamed, never loaded). Not thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>

#include "npzfs/file_util.h"
#include "npzfs/npy_header.h"
#include "npzfs/npy_reader.h"
#include "npzfs/status.h"

namespace npzfs::tool {

struct NpyInput {
  std::string path;
  UniqueFd fd;
  uint64_t size = 0;  // the whole file, copied verbatim into an archive
  size_t header_length = 0;
  std::optional<NpyHeader> header;
};

// Opens `path` and checks that it is a .npy numpy can load: a valid header and at least as
// many data bytes as the header claims. Errors name the file ("x.npy: not a .npy file: ...").
Result<NpyInput> OpenNpyInput(const std::string& path);

// "adc" -> "adc.npy"; "adc.npy" stays. EINVAL for keys that are empty, absolute, or have
// empty, "." or ".." components (they could not be extracted or mounted safely).
Result<std::string> MemberNameForKey(const std::string& key);
// "dir/adc.npy" -> "adc"
std::string StemOf(const std::string& path);

}  // namespace npzfs::tool
