// .npy files on disk: reading the header of an open file, and the one routine that repairs a
// grown file after a crash (NpyAppender::Recover and Open, growing members resumed from the
// spool). Both a writer that appends frames and a spool file follow the same rule: data
// first, count second, so after a crash the header may count fewer frames than the file
// holds, and a partial frame may trail. Repair brings the count up to the complete frames,
// in place, and cuts the partial frame.
//
// Functions over a caller's fd: as thread-safe as pread/pwrite/ftruncate on that fd, i.e. one
// caller at a time per file.
#pragma once

#include <cstdint>
#include <string>

#include "npzfs/npy_header.h"
#include "npzfs/npy_reader.h"
#include "npzfs/status.h"

namespace npzfs {

// Reads and parses the header at the start of a source of `size` bytes, without checking
// the data that follows it. The header length field is checked against numpy's limit
// (unless options.allow_large_header) before anything is allocated. EINVAL naming `name`:
// "not a .npy file" (too short, bad magic or version), over the limit, "truncated .npy
// header", or a malformed dict; or the source's own error.
Result<ParsedNpyHeader> ReadNpyHeaderOnly(uint64_t size, const ReadExactFn& read_exact,
                                          const std::string& name,
                                          const NpyParseOptions& options = {});

// The total header length a .npy file of `size` bytes announces in its first bytes, without
// parsing the dict (a file cut inside its header still has a length). EINVAL as above.
Result<size_t> ReadNpyHeaderLength(int fd, uint64_t size, const std::string& path);

// ReadNpyHeaderOnly over an open file.
Result<ParsedNpyHeader> ReadNpyFileHeader(int fd, uint64_t size, const std::string& path,
                                          const NpyParseOptions& options = {});

struct NpyRepair {
  NpyHeader header;            // the header with the count of complete frames
  uint64_t frames = 0;         // complete frames kept
  uint64_t dropped_bytes = 0;  // bytes of a partial trailing frame cut off
};

// The one .npy grow/repair routine. `file` is the parsed header of open `fd` (a frame layout
// that can grow: CheckGrowable) and `size` the file size. Keeps every complete frame after
// the header, truncates a partial one, and rewrites the count in place, padded to the
// header's own length, when it differs. Nothing is fsynced. EINVAL if the file is shorter
// than its header or the count does not fit the header's length; errno of failed calls.
Result<NpyRepair> RepairNpyFile(int fd, const ParsedNpyHeader& file, uint64_t size,
                                const std::string& path);

}  // namespace npzfs
