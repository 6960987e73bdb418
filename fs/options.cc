#include "fs/options.h"

#include <fnmatch.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>

#include "core/npy/frame_layout.h"
#include "npzfs/file_util.h"
#include "npzfs/npy_header.h"

namespace npzfs::fs {
namespace {

enum Key {
  kKeyHelp,
  kKeyVersion,
  kKeyQuiet,
  kKeyVerbose,
  kKeyReadOnly,
  kKeyReadWrite,
  kKeyCreate,
  kKeyNonEmpty,
  kKeyCompress,
  kKeyCompressLevel,
  kKeySpool,
  kKeyFrame,
  kKeyCache,
  kKeyIndex,
  kKeyLog,
  kKeyVerify,
  kKeyFinalize,
};

const fuse_opt kOptionSpecs[] = {
    FUSE_OPT_KEY("-h", kKeyHelp),
    FUSE_OPT_KEY("--help", kKeyHelp),
    FUSE_OPT_KEY("-V", kKeyVersion),
    FUSE_OPT_KEY("--version", kKeyVersion),
    FUSE_OPT_KEY("-q", kKeyQuiet),
    FUSE_OPT_KEY("--quiet", kKeyQuiet),
    FUSE_OPT_KEY("-v", kKeyVerbose),
    FUSE_OPT_KEY("--verbose", kKeyVerbose),
    FUSE_OPT_KEY("ro", kKeyReadOnly),
    FUSE_OPT_KEY("-r", kKeyReadOnly),  // libfuse's short form: a read-only kernel mount too
    FUSE_OPT_KEY("rw", kKeyReadWrite),
    FUSE_OPT_KEY("create", kKeyCreate),
    FUSE_OPT_KEY("nonempty", kKeyNonEmpty),
    FUSE_OPT_KEY("compress", kKeyCompress),
    FUSE_OPT_KEY("compress=", kKeyCompressLevel),
    FUSE_OPT_KEY("spool=", kKeySpool),
    FUSE_OPT_KEY("frame=", kKeyFrame),
    FUSE_OPT_KEY("cache=", kKeyCache),
    FUSE_OPT_KEY("index=", kKeyIndex),
    FUSE_OPT_KEY("log=", kKeyLog),
    FUSE_OPT_KEY("verify=", kKeyVerify),
    FUSE_OPT_KEY("finalize=", kKeyFinalize),
    FUSE_OPT_END,
};

// fuse_opt_parse's return values for one argument.
constexpr int kConsumed = 0;  // ours: removed from the arguments
constexpr int kKeep = 1;      // for libfuse
constexpr int kFailed = -1;   // the reason is in ParseState::error

// State shared with the C callback of fuse_opt_parse. The first error wins.
struct ParseState {
  Options options;
  std::vector<std::string> positional;
  std::string previous_frame;  // the frame= option just before this one, if it was one
  Status error;
};

std::string_view ValueOf(const char* arg) {
  const char* eq = std::strchr(arg, '=');
  return eq == nullptr ? std::string_view() : std::string_view(eq + 1);
}

std::optional<uint64_t> ParseUnsigned(std::string_view text) {
  uint64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size() || text.empty()) return std::nullopt;
  return value;
}

bool AllDigits(std::string_view text) {
  return !text.empty() &&
         std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
}

Status Invalid(const std::string& message) { return Status::Error(EINVAL, message); }

// Options without a value. Returns kConsumed or kKeep.
int ProcessFlag(Options& o, int key) {
  switch (key) {
    case kKeyHelp:
      o.show_help = true;
      return kConsumed;
    case kKeyVersion:
      o.show_version = true;
      return kConsumed;
    case kKeyQuiet:
      o.verbosity = Verbosity::kQuiet;
      return kConsumed;
    case kKeyVerbose:
      o.verbosity = Verbosity::kVerbose;
      return kConsumed;
    case kKeyReadOnly:
      o.read_only = true;
      return kKeep;  // also mount read-only in the kernel: writes fail with EROFS there
    case kKeyReadWrite:
      o.read_only = false;  // the last of ro and rw wins, here as in the kernel
      return kKeep;
    case kKeyCreate:
      o.create = true;
      return kConsumed;
    case kKeyNonEmpty:
      o.nonempty = true;  // libfuse 3 has no such option: the check is ours
      return kConsumed;
    case kKeyCompress:
      o.compress_level = 6;  // zlib's default, like np.savez_compressed
      return kConsumed;
  }
  return kKeep;
}

Status ProcessDirectoryOption(Options& o, int key, std::string_view value) {
  switch (key) {
    case kKeySpool:
      if (value.empty()) return Invalid("bad option 'spool=': DIR is empty");
      o.spool_dir = std::string(value);
      return Status::Ok();
    case kKeyIndex:
      if (value.empty()) return Invalid("bad option 'index=': expected DIR or off");
      o.index_enabled = value != "off";
      if (o.index_enabled) o.index_dir = std::string(value);
      return Status::Ok();
    case kKeyLog:
      if (value.empty()) return Invalid("bad option 'log=': FILE is empty");
      o.log_file = std::string(value);
      return Status::Ok();
  }
  return Status::Ok();
}

// Options with a value. Errors name the option as given.
Status ProcessValueOption(Options& o, int key, const char* arg) {
  const std::string_view value = ValueOf(arg);
  const std::string bad = std::string("bad option '") + arg + "'";
  switch (key) {
    case kKeyCompressLevel: {
      auto level = ParseUnsigned(value);
      if (!level || *level > 9) return Invalid(bad + ": LEVEL must be 0..9");
      o.compress_level = static_cast<int>(*level);
      return Status::Ok();
    }
    case kKeyFrame: {
      NPZ_ASSIGN_OR_RETURN(FramePattern pattern, ParseFramePattern(value));
      o.frames.push_back(std::move(pattern));
      return Status::Ok();
    }
    case kKeyCache: {
      auto mib = ParseUnsigned(value);
      if (!mib || *mib > (1ull << 30)) return Invalid(bad + ": expected MiB");
      o.cache_mib = *mib;
      return Status::Ok();
    }
    case kKeyVerify:
      if (value == "strict") {
        o.verify = VerifyMode::kStrict;
      } else if (value == "off") {
        o.verify = VerifyMode::kOff;
      } else if (value == "on") {
        o.verify = VerifyMode::kDefault;
      } else {
        return Invalid(bad + ": expected verify=strict, verify=on (the default) or verify=off");
      }
      return Status::Ok();
    case kKeyFinalize:
      if (value != "copy" && value != "inplace") {
        return Invalid(bad + ": expected finalize=copy or finalize=inplace (the default)");
      }
      o.finalize_copy = value == "copy";
      return Status::Ok();
  }
  return ProcessDirectoryOption(o, key, value);
}

// An option libfuse will see. A bare number right after frame= is a frame shape written with
// ',' (which separates -o options): say so now, instead of libfuse's "unknown option".
Status CheckFuseOption(const ParseState& state, const char* arg) {
  std::string_view option = arg;
  if (option.starts_with("-o")) option.remove_prefix(2);
  if (!state.previous_frame.empty() && AllDigits(option)) {
    return Invalid("bad option '" + std::string(option) + "' after 'frame=" + state.previous_frame +
                   "': frame shape axes are separated by 'x', not ',' (" +
                   "e.g. frame=" + state.previous_frame + "x" + std::string(option) + ")");
  }
  return Status::Ok();
}

// Returns kConsumed, kKeep or kFailed (the reason is then in state->error).
int ProcessOption(void* data, const char* arg, int key, fuse_args* /*outargs*/) {
  auto* state = static_cast<ParseState*>(data);
  std::string previous_frame = std::move(state->previous_frame);
  state->previous_frame.clear();
  Status s;
  int result = kConsumed;
  if (key == FUSE_OPT_KEY_NONOPT) {
    state->positional.emplace_back(arg);
  } else if (key == FUSE_OPT_KEY_OPT) {
    state->previous_frame = previous_frame;
    s = CheckFuseOption(*state, arg);
    state->previous_frame.clear();
    result = kKeep;
  } else if (std::strchr(arg, '=') == nullptr || key == kKeyHelp || key == kKeyVersion) {
    result = ProcessFlag(state->options, key);
  } else {
    s = ProcessValueOption(state->options, key, arg);
    if (key == kKeyFrame) state->previous_frame = std::string(ValueOf(arg));
  }
  if (!s.ok()) {
    state->error = s;
    return kFailed;
  }
  return result;
}

Status CheckCombinations(const Options& o) {
  if (o.create && o.read_only) {
    return Invalid("-o create and -o ro contradict each other: a read-only mount creates nothing");
  }
  return Status::Ok();
}

// Where an fnmatch pattern at the start of `spec` ends: at the first ':' that is neither
// escaped by a backslash nor inside a bracket expression ("[:]", "[[:digit:]]"); npos if
// none. A '[' that never closes is a plain character, as fnmatch takes it.
size_t PatternEnd(std::string_view spec) {
  for (size_t i = 0; i < spec.size(); ++i) {
    if (spec[i] == '\\') {
      ++i;  // the next character is literal
    } else if (spec[i] == '[') {
      // A ']' right after "[" or "[!" is a member; "[:class:]" holds ':' and ']'.
      size_t j = i + 1;
      if (j < spec.size() && (spec[j] == '!' || spec[j] == '^')) ++j;
      if (j < spec.size() && spec[j] == ']') ++j;
      while (j < spec.size() && spec[j] != ']') {
        if (spec[j] == '[' && j + 1 < spec.size() && spec[j + 1] == ':') {
          const size_t close = spec.find(":]", j + 2);
          if (close == std::string_view::npos) break;
          j = close + 2;
        } else {
          ++j;
        }
      }
      if (j < spec.size() && spec[j] == ']') i = j;  // else '[' is a plain character
    } else if (spec[i] == ':') {
      return i;
    }
  }
  return std::string_view::npos;
}

}  // namespace

Result<FramePattern> ParseFramePattern(std::string_view spec) {
  const std::string where = "bad option 'frame=" + std::string(spec) + "'";
  // The pattern ends at its first ':' that fnmatch would match as a plain ':' (a file name
  // may hold one: "run-12:30*" is written "run-12[:]30*"); the shape starts after the last
  // ':'; a structured descr in between may itself contain ':'.
  const size_t first = PatternEnd(spec);
  const size_t last = spec.rfind(':');
  if (first == std::string_view::npos || first == last) {
    return Invalid(where + ": expected PATTERN:DTYPE:SHAPE, e.g. frame=adc*:int16:256x1024");
  }
  FramePattern p;
  p.pattern = std::string(spec.substr(0, first));
  const std::string_view dtype = spec.substr(first + 1, last - first - 1);
  if (p.pattern.empty()) return Invalid(where + ": PATTERN is empty");
  if (p.pattern[0] == '/') {
    return Invalid(where +
                   ": PATTERN is matched against paths from the mount root, which do not begin "
                   "with '/'");
  }
  if (dtype.empty()) return Invalid(where + ": DTYPE is empty");
  // The dtype alone (frames of one item), then the whole layout, as every create would build
  // it: a shape whose byte size overflows is the SHAPE's fault, not the dtype's.
  auto descr = GrowableDescr(dtype, "DTYPE '" + std::string(dtype) + "'");
  if (!descr.ok()) {
    return Invalid(where + ": " + descr.status().message() +
                   " (use a numpy dtype name such as int16, float32, uint8, complex64, or a "
                   "descr such as <i2)");
  }
  p.descr = std::move(descr).value();
  auto shape = ParseFrameShape(spec.substr(last + 1));
  if (!shape.ok()) return Invalid(where + ": SHAPE: " + shape.status().message());
  p.shape = std::move(shape).value();
  auto layout = NpyHeader::ForFrames(p.descr, p.shape, /*fortran_order=*/false, 0);
  if (!layout.ok()) return Invalid(where + ": SHAPE: " + layout.status().message());
  Status growable = CheckGrowable(*layout, "frames of " + std::string(dtype));
  if (!growable.ok()) return Invalid(where + ": " + growable.message());
  return p;
}

std::string DeriveMountpoint(const std::string& archive) {
  std::string base = BaseName(archive);
  for (std::string_view ext : {".npz", ".zip", ".NPZ", ".ZIP"}) {
    if (base.size() > ext.size() && base.ends_with(ext)) {
      return base.substr(0, base.size() - ext.size());
    }
  }
  return base + ".d";
}

const FramePattern* MatchFramePattern(const std::vector<FramePattern>& frames,
                                      const std::string& member_path) {
  const size_t slash = member_path.rfind('/');
  const std::string base = slash == std::string::npos ? member_path : member_path.substr(slash + 1);
  for (const FramePattern& p : frames) {
    // As in a shell: * and ? never match a '/'. A pattern without '/' names files in any
    // directory (matched against the file name), one with '/' a path from the mount root.
    const bool whole_path = p.pattern.find('/') != std::string::npos;
    if (fnmatch(p.pattern.c_str(), (whole_path ? member_path : base).c_str(), FNM_PATHNAME) == 0) {
      return &p;
    }
  }
  return nullptr;
}

Result<Options> ParseOptions(fuse_args* args) {
  ParseState state;
  if (fuse_opt_parse(args, &state, kOptionSpecs, ProcessOption) != 0) {
    if (!state.error.ok()) return state.error;
    return Invalid("cannot parse the command line");
  }
  Options o = std::move(state.options);
  if (o.show_help || o.show_version) return o;
  NPZ_RETURN_IF_ERROR(CheckCombinations(o));
  if (state.positional.empty()) return Invalid("missing ARCHIVE (see npzfs --help)");
  if (state.positional.size() > 2) {
    return Invalid("unexpected argument '" + state.positional[2] +
                   "': expected ARCHIVE [MOUNTPOINT]");
  }
  o.archive = state.positional[0];
  if (o.archive.empty()) return Invalid("ARCHIVE is empty");
  if (state.positional.size() == 2) {
    o.mountpoint = state.positional[1];
  } else {
    o.mountpoint = DeriveMountpoint(o.archive);
    o.mountpoint_derived = true;
  }
  return o;
}

std::string UsageText(const char* program) {
  return std::string("usage: ") + program +
         " [options] ARCHIVE [MOUNTPOINT]\n"
         "\n"
         "Mounts a NumPy .npz archive as a directory of .npy files. New files written in the\n"
         "mount are growing .npy members, added to the archive when it is unmounted.\n"
         "MOUNTPOINT defaults to the archive name without .npz, created if missing.\n"
         "\n"
         "npzfs options:\n"
         "    -h   --help            print this help\n"
         "    -V   --version         print the version\n"
         "    -q   --quiet           log warnings and errors only\n"
         "    -v   --verbose         also log every open and every error reply\n"
         "    -o ro                  read only (needs no writable directory)\n"
         "    -o create              create ARCHIVE on unmount if it does not exist\n"
         "    -o nonempty            allow a MOUNTPOINT that holds files\n"
         "    -o compress[=LEVEL]    deflate new members (default level 6)\n"
         "    -o spool=DIR           spool directory for new members, made on the first\n"
         "                           new file (default: .ARCHIVE.npzfs-spool next to it)\n"
         "    -o frame=PATTERN:DTYPE:SHAPE\n"
         "                           new members matching PATTERN hold raw frames,\n"
         "                           e.g. frame=adc*:int16:256x1024 (repeatable)\n"
         "    -o cache=MiB           decompressed span cache (default 128)\n"
         "    -o index=DIR|off       where to keep the random-access index, or none\n"
         "    -o log=FILE            append the log to FILE\n"
         "    -o verify=strict|on|off  CRC-32 checks: before any byte is served, as reads go\n"
         "                           (default), or none\n"
         "    -o finalize=copy|inplace  add new members by copying the archive and renaming\n"
         "                           the copy over it, or append in place behind an undo\n"
         "                           journal (the default)\n"
         "\n";
}

}  // namespace npzfs::fs
