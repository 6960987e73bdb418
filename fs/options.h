// Command-line options of the npzfs daemon.
//
//   npzfs [options] ARCHIVE [MOUNTPOINT]
//
// ParseOptions() takes the npzfs-specific options (-o ro, create, nonempty, compress[=LEVEL],
// spool=DIR, frame=PATTERN:DTYPE:SHAPE, cache=MiB, index=DIR|off, log=FILE,
// verify=strict|on|off, finalize=copy|inplace; -q, -v) and the two positional arguments out of
// argv, and leaves every other option (-f, -d, -s, allow_other, ...) in `fuse_args` for
// fuse_parse_cmdline() and the session. A frame= layout is checked completely here (dtype, axes),
// so a bad one fails the mount instead of every later create. Parsing is pure (no FUSE session, no
// file system access) apart from the fuse_args it fills, so errors reach the terminal before any
// mount. Nothing here is shared between threads.
#pragma once

#include <fuse_opt.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "npzfs/archive.h"
#include "npzfs/status.h"

namespace npzfs::fs {

// One -o frame=PATTERN:DTYPE:SHAPE: new members whose name matches PATTERN (fnmatch) hold
// raw frames of DTYPE with the given non-growth axes.
struct FramePattern {
  std::string pattern;          // fnmatch pattern, matched against the member path
  std::string descr;            // numpy descr, e.g. "<i2" (a dtype name given is translated)
  std::vector<uint64_t> shape;  // frame shape (non-growth axes); empty: scalar frames
};

enum class Verbosity {
  kQuiet,    // -q: warnings and errors only
  kNormal,   // mounts, new members, finalize, warnings, errors
  kVerbose,  // -v: also every open and every error reply, expected ones included
};

struct Options {
  std::string archive;                // as given on the command line
  std::string mountpoint;             // as given, or derived from the archive name
  bool mountpoint_derived = false;    // MOUNTPOINT was omitted
  bool read_only = false;             // -o ro
  bool create = false;                // -o create: a missing ARCHIVE is created on unmount
  bool nonempty = false;              // -o nonempty: mount over a directory with files
  std::optional<int> compress_level;  // -o compress[=LEVEL]; nullopt: store new members
  std::string spool_dir;              // -o spool=DIR; empty: DefaultSpoolDir(archive)
  std::vector<FramePattern> frames;   // -o frame=..., in command-line order
  uint64_t cache_mib = 128;           // -o cache=MiB
  bool index_enabled = true;          // -o index=off
  std::string index_dir;              // -o index=DIR; empty: next to the archive
  std::string log_file;               // -o log=FILE; empty: stderr / syslog / runtime dir
  Verbosity verbosity = Verbosity::kNormal;
  VerifyMode verify = VerifyMode::kDefault;  // -o verify=strict|on|off
  bool finalize_copy = false;                // -o finalize=copy (default: in place)
  bool show_help = false;                    // -h / --help
  bool show_version = false;                 // -V / --version
};

// Parses argv into Options; options it does not know stay in `fuse_args` (which must be
// initialised with FUSE_ARGS_INIT(argc, argv) and freed by the caller). EINVAL with a message
// for a malformed npzfs option or a wrong number of positional arguments. A missing
// ARCHIVE is an error unless -h or -V was given.
Result<Options> ParseOptions(fuse_args* args);

// "PATTERN:DTYPE:SHAPE": PATTERN ends at its first ':' outside a bracket expression and not
// escaped by a backslash ("run-12[:]30*" matches "run-12:30.npy"); DTYPE a numpy dtype name
// ("int16") or descr ("<i2"), SHAPE in the frame-shape grammar of core/npy/frame_layout.h
// with axes separated by 'x' ("adc*:int16:256x1024"; ',' separates -o options). An empty
// SHAPE means scalar frames.
// EINVAL naming the option and the bad part if the layout could not make frames.
Result<FramePattern> ParseFramePattern(std::string_view spec);

// The mount point used when MOUNTPOINT is omitted: the archive's base name without a
// ".npz"/".zip" extension, in the current directory ("dir/data.npz" -> "data"). A name
// without such an extension gets ".d" appended so that it never equals the archive.
std::string DeriveMountpoint(const std::string& archive);

// The first -o frame= pattern matching `member_path` ("d/adc3.npy"), or nullptr. A shell
// pattern: * and ? never match '/'; a pattern without '/' is matched against the file name
// ("adc*" matches "d/adc3.npy"), one with '/' against the whole path ("d/*.npy").
const FramePattern* MatchFramePattern(const std::vector<FramePattern>& frames,
                                      const std::string& member_path);

// Usage text for -h (the FUSE option help is printed after it by the caller).
std::string UsageText(const char* program);

}  // namespace npzfs::fs
