#include "fs/options.h"

#include <fnmatch.h>

#include <cerrno>
#include <charconv>
#include <cstring>

#include "core/npy/frame_layout.h"
#include "npzfs/file_util.h"

namespace npzfs::fs {
namespace {

enum Key {
  kKeyHelp,
  kKeyVersion,
  kKeyReadOnly,
  kKeyCompress,
  kKeyCompressLevel,
  kKeySpool,
  kKeyFrame,
  kKeyCache,
  kKeyIndex,
};

const fuse_opt kOptionSpecs[] = {
    FUSE_OPT_KEY("-h", kKeyHelp),
    FUSE_OPT_KEY("--help", kKeyHelp),
    FUSE_OPT_KEY("-V", kKeyVersion),
    FUSE_OPT_KEY("--version", kKeyVersion),
    FUSE_OPT_KEY("ro", kKeyReadOnly),
    FUSE_OPT_KEY("compress", kKeyCompress),
    FUSE_OPT_KEY("compress=", kKeyCompressLevel),
    FUSE_OPT_KEY("spool=", kKeySpool),
    FUSE_OPT_KEY("frame=", kKeyFrame),
    FUSE_OPT_KEY("cache=", kKeyCache),
    FUSE_OPT_KEY("index=", kKeyIndex),
    FUSE_OPT_END,
};

// State shared with the C callback of fuse_opt_parse. The first error wins.
struct ParseState {
  Options options;
  std::vector<std::string> positional;
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

Status Invalid(const std::string& message) { return Status::Error(EINVAL, message); }

// Returns 0 to discard an argument we consumed, 1 to keep it for FUSE, -1 on error
// (fuse_opt_parse then fails; the reason is in state->error).
int ProcessOption(void* data, const char* arg, int key, fuse_args* /*outargs*/) {
  auto* state = static_cast<ParseState*>(data);
  Options& o = state->options;
  switch (key) {
    case FUSE_OPT_KEY_NONOPT:
      state->positional.emplace_back(arg);
      return 0;
    case kKeyHelp:
      o.show_help = true;
      return 0;
    case kKeyVersion:
      o.show_version = true;
      return 0;
    case kKeyReadOnly:
      o.read_only = true;
      return 1;  // also mount read-only in the kernel: writes fail with EROFS there
    case kKeyCompress:
      o.compress_level = 6;  // zlib's default, like np.savez_compressed
      return 0;
    case kKeyCompressLevel: {
      auto level = ParseUnsigned(ValueOf(arg));
      if (!level || *level > 9) {
        state->error = Invalid(std::string("bad option '") + arg + "': LEVEL must be 0..9");
        return -1;
      }
      o.compress_level = static_cast<int>(*level);
      return 0;
    }
    case kKeySpool:
      o.spool_dir = std::string(ValueOf(arg));
      if (o.spool_dir.empty()) {
        state->error = Invalid("bad option 'spool=': DIR is empty");
        return -1;
      }
      return 0;
    case kKeyFrame: {
      auto pattern = ParseFramePattern(ValueOf(arg));
      if (!pattern.ok()) {
        state->error = pattern.status();
        return -1;
      }
      o.frames.push_back(std::move(pattern).value());
      return 0;
    }
    case kKeyCache: {
      auto mib = ParseUnsigned(ValueOf(arg));
      if (!mib || *mib > (1ull << 30)) {
        state->error = Invalid(std::string("bad option '") + arg + "': expected MiB");
        return -1;
      }
      o.cache_mib = *mib;
      return 0;
    }
    case kKeyIndex: {
      std::string_view value = ValueOf(arg);
      if (value == "off") {
        o.index_enabled = false;
      } else if (value.empty()) {
        state->error = Invalid("bad option 'index=': expected DIR or off");
        return -1;
      } else {
        o.index_enabled = true;
        o.index_dir = std::string(value);
      }
      return 0;
    }
    default:
      return 1;
  }
}

}  // namespace

Result<FramePattern> ParseFramePattern(std::string_view spec) {
  const std::string where = "bad option 'frame=" + std::string(spec) + "'";
  // The pattern ends at the first ':', the shape starts after the last one; a structured
  // descr in between may itself contain ':'.
  size_t first = spec.find(':');
  size_t last = spec.rfind(':');
  if (first == std::string_view::npos || first == last) {
    return Invalid(where + ": expected PATTERN:DTYPE:SHAPE, e.g. frame=adc*:<i2:256x1024");
  }
  FramePattern p;
  p.pattern = std::string(spec.substr(0, first));
  p.descr = std::string(spec.substr(first + 1, last - first - 1));
  if (p.pattern.empty()) return Invalid(where + ": PATTERN is empty");
  if (p.descr.empty()) return Invalid(where + ": DTYPE is empty");
  auto shape = ParseFrameShape(spec.substr(last + 1));
  if (!shape.ok()) return Invalid(where + ": SHAPE: " + shape.status().message());
  p.shape = std::move(shape).value();
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
  for (const FramePattern& p : frames) {
    if (fnmatch(p.pattern.c_str(), member_path.c_str(), 0) == 0) return &p;
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
         "    -o ro                  read only\n"
         "    -o compress[=LEVEL]    deflate new members (default level 6)\n"
         "    -o spool=DIR           spool directory for new members\n"
         "                           (default: .ARCHIVE.npzfs-spool next to the archive)\n"
         "    -o frame=PATTERN:DTYPE:SHAPE\n"
         "                           new members matching PATTERN hold raw frames,\n"
         "                           e.g. frame=adc*:<i2:256x1024 (repeatable)\n"
         "    -o cache=MiB           decompressed span cache (default 128)\n"
         "    -o index=DIR|off       where to keep the random-access index, or none\n"
         "\n";
}

}  // namespace npzfs::fs
