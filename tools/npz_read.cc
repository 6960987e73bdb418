// npz ls, npz frames, npz verify, npz index: the subcommands that read archives.
//
// They go through npzfs/archive.h, the same reader the mount uses, so a deflated member is
// read with random access: `frames` inflates only up to its last frame (or starts at a
// checkpoint of the saved index) and saves what it learned for the next run; `ls` reads only
// each member's header. `verify` additionally checks the CRC-32 itself (not trusting the
// reader's own check alone) and cross-checks the central directory with libzip, an
// independent parser.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zip.h>

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_set>
#include <vector>

#include "core/base/atomic_file.h"
#include "core/base/crc32.h"
#include "core/base/text_codec.h"
#include "core/npy/frame_layout.h"
#include "core/read/inflate_engine.h"
#include "npzfs/archive.h"
#include "npzfs/file_util.h"
#include "npzfs/member_reader.h"
#include "npzfs/npy_header.h"
#include "npzfs/npy_reader.h"
#include "npzfs/zip_directory.h"
#include "tools/npz_cli.h"
#include "tools/npz_files.h"
#include "tools/progress.h"
#include "tools/signal_cleanup.h"

namespace npzfs::tool {
namespace {

constexpr size_t kChunk = 1 << 20;
// `frames` hands ReadFramesFrom batches of about this many bytes (at least one frame).
constexpr uint64_t kFrameBatchBytes = 8 << 20;

// A read_exact for ReadFramesFrom/ReadNpyHeaderFrom over a member.
ReadExactFn MemberReadExact(std::shared_ptr<MemberReader> reader, std::string name) {
  return [reader = std::move(reader), name = std::move(name)](uint64_t offset,
                                                              std::span<std::byte> dest) {
    return ReadExactAt(*reader, offset, dest, name);
  };
}

// `message` prefixed with `name` ("data.npz: member a.npy") unless it already names the
// member (core messages usually do).
std::string AboutMember(const std::string& name, const std::string& member_path,
                        const std::string& message) {
  if (message.find(member_path) != std::string::npos) return message;
  return name + ": " + message;
}

std::string MethodName(const ZipEntry& e) {
  if (e.encrypted()) return "encrypted";
  if (e.method == 0) return "stored";
  if (e.method == 8) return "deflated";
  return "method " + std::to_string(e.method);
}

std::string IndexStateName(IndexState s) {
  switch (s) {
    case IndexState::kNotNeeded:
      return "-";
    case IndexState::kNone:
      return "none";
    case IndexState::kPartial:
      return "partial";
    case IndexState::kComplete:
      return "complete";
    case IndexState::kSeekable:
      return "seekable";
  }
  return "?";
}

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

// The reader's warnings (skipped unsafe names, a stale index being rebuilt...) go to stderr.
// `ls` only shows headers and `verify` checks every CRC-32 itself: both read with the
// reader's own checks off (kOff), so a stored member is not read twice.
ArchiveOptions ToolArchiveOptions(VerifyMode verify = VerifyMode::kDefault) {
  ArchiveOptions options;
  options.verify = verify;
  options.log = [](const std::string& line) { PrintMessage("warning: " + line); };
  return options;
}

Result<std::shared_ptr<Archive>> OpenArchive(const std::string& path,
                                             ArchiveOptions options = ToolArchiveOptions()) {
  // Archive::Open reports a missing file with its own words; check first for a plain
  // "No such file or directory" naming the path, as for every other input.
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return ErrnoStatus(errno, path, "cannot open");
  return Archive::Open(path, std::move(options));
}

// Reads member i's .npy header through the archive reader.
Result<ParsedNpyHeader> MemberHeader(Archive& archive, size_t i) {
  const ArchiveMember& m = archive.members()[i];
  const std::string name = archive.path() + ": member " + m.path;
  auto reader = archive.OpenMember(i);
  if (!reader.ok()) return reader.status();
  return ReadNpyHeaderOf((*reader)->size(), MemberReadExact(*reader, name), name);
}

struct LsRow {
  std::string name, dtype = "-", shape = "-", method, index;
  std::optional<std::vector<uint64_t>> shape_values;  // for --json
  bool fortran = false;
  uint64_t compressed = 0, uncompressed = 0;
  std::string error;  // full message (--json)
  std::string note;   // short form for the table
};

std::string JsonShape(const LsRow& r) {
  if (!r.shape_values) return "null";
  std::string s = "[";
  for (size_t i = 0; i < r.shape_values->size(); ++i) {
    s += (i == 0 ? "" : ", ") + std::to_string((*r.shape_values)[i]);
  }
  return s + "]";
}

}  // namespace

namespace {

// One row of `npz ls`: what the directory says, plus the .npy header when there is one.
LsRow MakeLsRow(Archive& a, size_t i, int* exit_code) {
  const ArchiveMember& m = a.members()[i];
  LsRow row;
  row.name = m.path;
  row.method = MethodName(m.entry);
  row.compressed = m.entry.compressed_size;
  row.uncompressed = m.entry.uncompressed_size;
  row.index = IndexStateName(a.index_state(i));  // before reading the header changes it
  if (m.open_errno != 0) {
    row.error = m.open_error.empty() ? "cannot be opened" : m.open_error;
    row.note = m.open_errno == EPERM     ? "encrypted"
               : m.open_errno == ENOTSUP ? "unsupported method"
                                         : "unreadable";
  } else if (IsNpyName(m.path)) {
    auto header = MemberHeader(a, i);
    if (header.ok()) {
      row.dtype = DtypeText(header->header);
      row.shape = ShapeText(header->header.shape());
      row.shape_values = header->header.shape();
      row.fortran = header->header.fortran_order();
    } else {
      row.dtype = row.shape = "?";
      row.error = header.status().message();
      row.note = "bad .npy header";
      ReportError(header.status());
      *exit_code = kExitError;
    }
  }
  return row;
}

void PrintLsJson(const std::vector<LsRow>& rows) {
  std::printf("[");
  for (size_t i = 0; i < rows.size(); ++i) {
    const LsRow& r = rows[i];
    std::printf(
        "%s\n  {\"name\": %s, \"dtype\": %s, \"shape\": %s, \"fortran_order\": %s, "
        "\"method\": %s, \"compressed_size\": %" PRIu64 ", \"uncompressed_size\": %" PRIu64
        ", \"index\": %s",
        i == 0 ? "" : ",", JsonString(r.name).c_str(),
        r.dtype == "-" ? "null" : JsonString(r.dtype).c_str(), JsonShape(r).c_str(),
        r.fortran ? "true" : "false", JsonString(r.method).c_str(), r.compressed, r.uncompressed,
        JsonString(r.index).c_str());
    if (!r.error.empty()) std::printf(", \"error\": %s", JsonString(r.error).c_str());
    std::printf("}");
  }
  std::printf("%s]\n", rows.empty() ? "" : "\n");
}

void PrintLsTable(const std::vector<LsRow>& rows) {
  size_t name_w = 4, dtype_w = 5, shape_w = 5;
  // Names as a terminal can show them: control bytes escaped, never cut.
  std::vector<std::string> names;
  for (const LsRow& r : rows) {
    names.push_back(PrintableName(r.name, std::numeric_limits<size_t>::max()));
    name_w = std::max(name_w, names.back().size());
    dtype_w = std::max(dtype_w, r.dtype.size());
    shape_w = std::max(shape_w, r.shape.size());
  }
  std::printf("%-*s  %-*s  %-*s  %-9s  %10s  %10s  %6s  %s\n", static_cast<int>(name_w), "name",
              static_cast<int>(dtype_w), "dtype", static_cast<int>(shape_w), "shape", "method",
              "compressed", "size", "ratio", "index");
  for (size_t i = 0; i < rows.size(); ++i) {
    const LsRow& r = rows[i];
    char ratio[16] = "-";
    if (r.uncompressed > 0) {
      std::snprintf(
          ratio, sizeof ratio, "%.1f%%",
          100.0 * static_cast<double>(r.compressed) / static_cast<double>(r.uncompressed));
    }
    std::printf("%-*s  %-*s  %-*s  %-9s  %10s  %10s  %6s  %s%s\n", static_cast<int>(name_w),
                names[i].c_str(), static_cast<int>(dtype_w), r.dtype.c_str(),
                static_cast<int>(shape_w), (r.shape + (r.fortran ? " F" : "")).c_str(),
                r.method.c_str(), HumanBytes(r.compressed).c_str(),
                HumanBytes(r.uncompressed).c_str(), ratio, r.index.c_str(),
                r.note.empty() ? "" : ("  (" + r.note + ")").c_str());
  }
}

}  // namespace

int RunLs(const std::vector<std::string>& raw_args) {
  auto args = ParseArgs(raw_args, {{"json", OptionSpec::Kind::kFlag, 0}, kIndexOptionSpec});
  if (!args.ok()) return UsageError("ls", args.status().message());
  if (args->help) return PrintCommandHelp("ls");
  if (args->positional.size() != 1) return UsageError("ls", "expected one ARCHIVE");
  ArchiveOptions options = ToolArchiveOptions(VerifyMode::kOff);
  ApplyIndexOption(*args, args->positional[0], options);
  auto archive = OpenArchive(args->positional[0], std::move(options));
  if (!archive.ok()) return ReportError(archive.status());
  std::vector<LsRow> rows;
  int exit_code = kExitOk;
  for (size_t i = 0; i < (*archive)->members().size(); ++i) {
    rows.push_back(MakeLsRow(**archive, i, &exit_code));
  }
  if (args->Has("json")) {
    PrintLsJson(rows);
  } else {
    PrintLsTable(rows);
  }
  return exit_code;
}

namespace {

// What `frames` reads from: a plain .npy file or an archive member.
struct FrameSource {
  std::string name;  // for messages: the path, or "archive: member key"
  uint64_t size = 0;
  ReadExactFn read_exact;
  std::shared_ptr<Archive> archive;  // null for a plain .npy
  size_t member = 0;                 // in `archive`
  UniqueFd fd;                       // the plain .npy's
};

// The member `key` names (or the only member when `key` is empty), or ENOENT listing them.
Result<size_t> FindFramesMember(const Archive& archive, const std::string& path,
                                const std::string& key) {
  std::optional<size_t> index;
  if (key.empty()) {
    if (archive.members().size() == 1) index = 0;
  } else {
    index = archive.Find(key);
    if (!index) index = archive.Find(key + ".npy");
  }
  if (index) return *index;
  std::string listing;
  for (const auto& m : archive.members()) {
    if (listing.size() > 200) {
      listing += ", ...";
      break;
    }
    listing += (listing.empty() ? "" : ", ") + Shown(m.path);
  }
  const std::string what = key.empty() ? "is an archive: name the member as " + path + ":KEY"
                                       : "no member '" + Shown(key) + "'";
  return Status::Error(ENOENT, path + ": " + what + " (members: " + listing + ")");
}

// The reader's own log lines, held until a member is done: one that a failure repeats is
// printed once, as that failure, and the others as warnings. Must outlive the Archive whose
// log it is; the log may be called from the archive's threads.
class HeldWarnings {
 public:
  ArchiveOptions Options(ArchiveOptions options) {
    options.log = [this](const std::string& line) {
      std::lock_guard lock(mu_);
      lines_.push_back(line);
    };
    return options;
  }
  void DropRepeatedBy(const std::string& failure) {
    std::lock_guard lock(mu_);
    std::erase_if(lines_, [&](const std::string& w) {
      return failure.find(w) != std::string::npos || w.find(failure) != std::string::npos;
    });
  }
  void Flush() {
    std::lock_guard lock(mu_);
    for (const std::string& w : lines_) PrintMessage("warning: " + w);
    lines_.clear();
  }

 private:
  std::mutex mu_;
  std::vector<std::string> lines_;
};

// ARCHIVE[:KEY] or FILE.npy: a path that exists is taken whole (it may contain ':').
// The archive's log lines go to `warnings`, which must outlive the source.
Result<FrameSource> OpenFrameSource(const std::string& spec, const ParsedArgs& args,
                                    HeldWarnings& warnings) {
  std::string path = spec, key;
  struct stat st;
  if (stat(spec.c_str(), &st) != 0) {
    // ARCHIVE:KEY, where either may hold colons ("run-12:30.npz:adc", "d.npz:a:b"): the
    // longest ARCHIVE that names a file; the last colon if none does (for the message).
    size_t split = spec.rfind(':');
    for (size_t colon = split; colon != std::string::npos && colon > 0;
         colon = spec.rfind(':', colon - 1)) {
      if (stat(spec.substr(0, colon).c_str(), &st) == 0) {
        split = colon;
        break;
      }
    }
    if (split != std::string::npos) {
      path = spec.substr(0, split);
      key = spec.substr(split + 1);
    }
  }
  FrameSource src;
  NPZ_ASSIGN_OR_RETURN(src.fd, OpenRegularFile(path, O_RDONLY));
  if (fstat(src.fd.get(), &st) != 0) return ErrnoStatus(errno, path, "fstat");
  char magic[6] = {};
  NPZ_ASSIGN_OR_RETURN(size_t got, PreadFull(src.fd.get(), magic, sizeof magic, 0, path));
  if (got == 6 && std::string_view(magic, 6) == NpyHeader::kMagic) {
    if (!key.empty()) {
      return Status::Error(EINVAL, path + ": is a .npy file, not an archive: drop ':" + key + "'");
    }
    src.name = path;
    src.size = static_cast<uint64_t>(st.st_size);
    src.read_exact = [raw_fd = src.fd.get(), path](uint64_t offset, std::span<std::byte> dest) {
      return PreadExact(raw_fd, dest.data(), dest.size(), offset, path);
    };
    return src;
  }
  ArchiveOptions options = warnings.Options(ToolArchiveOptions());
  ApplyIndexOption(args, path, options);
  NPZ_ASSIGN_OR_RETURN(src.archive, Archive::Open(path, std::move(options)));
  NPZ_ASSIGN_OR_RETURN(size_t index, FindFramesMember(*src.archive, path, key));
  src.member = index;
  const ArchiveMember& m = src.archive->members()[index];
  src.name = path + ": member " + m.path;
  if (m.open_errno != 0) {
    return Status::Error(m.open_errno, AboutMember(src.name, m.path, m.open_error));
  }
  NPZ_ASSIGN_OR_RETURN(std::shared_ptr<MemberReader> reader, src.archive->OpenMember(index));
  src.size = reader->size();
  src.read_exact = MemberReadExact(reader, src.name);
  return src;
}

// Checks that frames [start, stop) exist in the .npy behind `header`.
Status CheckFrameRange(const NpyHeader& header, const std::string& name, uint64_t start,
                       uint64_t stop) {
  if (!header.frameable()) {
    return Status::Error(
        EINVAL, name + ": has no frames to slice (" +
                    (header.has_object() ? std::string("object dtype") : "a 0-d array") + ")");
  }
  if (start > stop) {
    return Status::Error(EINVAL, name + ": START " + std::to_string(start) + " is after STOP " +
                                     std::to_string(stop));
  }
  if (stop > header.frame_count()) {
    return Status::Error(ERANGE, name + ": frames [" + std::to_string(start) + ", " +
                                     std::to_string(stop) + ") are out of range: it has " +
                                     std::to_string(header.frame_count()) + " frames");
  }
  return Status::Ok();
}

// Writes frames [start, stop) (with a .npy header unless `raw`) to `output`, or to stdout
// when `output` is empty; the file appears only complete (AtomicFile), and `cleanup` (when
// writing a file) learns its temp file.
Status WriteFrames(const FrameSource& src, const ParsedNpyHeader& parsed, uint64_t start,
                   uint64_t stop, bool raw, const std::string& output, bool force,
                   CleanupOnSignal* cleanup) {
  const NpyHeader& header = parsed.header;
  std::optional<AtomicFile> out;
  if (!output.empty()) {
    AtomicFileOptions options;
    options.replace_existing = force;  // also when another program made it meanwhile
    SignalsDeferred deferred;          // a signal now would leave a temp file nobody named
    NPZ_ASSIGN_OR_RETURN(AtomicFile created, AtomicFile::Create(output, options));
    out.emplace(std::move(created));
    if (cleanup != nullptr) cleanup->OwnTempFile(out->temp_path());
  }
  auto emit = [&](const void* data, size_t n) -> Status {
    if (out) return out->Write(data, n);
    return WriteAll(STDOUT_FILENO, data, n, "stdout");
  };
  if (!raw) {
    const std::string head = header.WithFrameCount(stop - start).Format();
    NPZ_RETURN_IF_ERROR(emit(head.data(), head.size()));
  }
  const uint64_t frame_bytes = header.frame_bytes();
  const uint64_t batch =
      std::max<uint64_t>(1, frame_bytes == 0 ? 1 : kFrameBatchBytes / frame_bytes);
  ProgressBar bar("frames " + BaseName(src.name), (stop - start) * frame_bytes);
  for (uint64_t f = start; f < stop;) {
    const uint64_t end = std::min(stop, f + batch);
    NPZ_ASSIGN_OR_RETURN(std::vector<std::byte> frames,
                         ReadFramesFrom(header, parsed.length, f, end, src.read_exact, src.name));
    NPZ_RETURN_IF_ERROR(emit(frames.data(), frames.size()));
    bar.Update((end - start) * frame_bytes);
    f = end;
  }
  if (out) NPZ_RETURN_IF_ERROR(out->Commit());
  bar.Finish();
  return Status::Ok();
}

// Refuses an OUT that is the file the frames come from (replacing an archive with a slice
// of one member would lose the rest), and an OUT that exists unless `force`.
Status CheckFramesOutput(const std::string& output, const FrameSource& src, bool force) {
  struct stat out_st, src_st;
  if (stat(output.c_str(), &out_st) == 0 && fstat(src.fd.get(), &src_st) == 0 &&
      out_st.st_dev == src_st.st_dev && out_st.st_ino == src_st.st_ino) {
    return Status::Error(EINVAL, output + ": is the file the frames are read from (" +
                                     src.name + "); write them to another file");
  }
  if (lstat(output.c_str(), &out_st) == 0) {
    // The output is renamed over OUT: a device, a FIFO or a symlink would be replaced by a
    // regular file (-o /dev/null --force), not written to.
    if (!S_ISREG(out_st.st_mode)) {
      return Status::Error(EEXIST, output + ": exists and is " + FileKind(out_st.st_mode) +
                                       ", which --force does not replace (only a regular file)");
    }
    if (!force) return Status::Error(EEXIST, output + ": exists (--force replaces it)");
  }
  return Status::Ok();
}

}  // namespace

int RunFrames(const std::vector<std::string>& raw_args) {
  auto args = ParseArgs(raw_args, {{"output", OptionSpec::Kind::kValue, 'o'},
                                   {"raw", OptionSpec::Kind::kFlag, 0},
                                   {"force", OptionSpec::Kind::kFlag, 'f'},
                                   kIndexOptionSpec});
  if (!args.ok()) return UsageError("frames", args.status().message());
  if (args->help) return PrintCommandHelp("frames");
  if (args->positional.size() != 3) {
    return UsageError("frames", "expected ARCHIVE[:KEY] START STOP");
  }
  const bool raw = args->Has("raw");
  std::optional<std::string> output = args->Last("output");
  if (raw && output) return UsageError("frames", "give either -o OUT.npy or --raw, not both");
  auto start = ParseUint(args->positional[1], "START");
  if (!start.ok()) return UsageError("frames", start.status().message());
  auto stop = ParseUint(args->positional[2], "STOP");
  if (!stop.ok()) return UsageError("frames", stop.status().message());
  const bool to_stdout = raw || !output || *output == "-";
  if (to_stdout && isatty(STDOUT_FILENO) == 1) {
    return UsageError("frames", "refusing to write binary data to a terminal: use -o OUT.npy");
  }
  // A data error the reader logged is reported once, as the failure; other lines are
  // printed as warnings at the end.
  HeldWarnings warnings;
  auto report = [&warnings](const Status& failure) {
    warnings.DropRepeatedBy(failure.message());
    warnings.Flush();
    return ReportError(failure);
  };
  auto src = OpenFrameSource(args->positional[0], *args, warnings);
  if (!src.ok()) return report(src.status());
  if (!to_stdout) {
    Status checked = CheckFramesOutput(*output, *src, args->Has("force"));
    if (!checked.ok()) return report(checked);
  }
  auto parsed = ReadNpyHeaderOf(src->size, src->read_exact, src->name);
  if (!parsed.ok()) return report(parsed.status());
  Status s = CheckFrameRange(parsed->header, src->name, *start, *stop);
  if (s.ok()) {
    std::optional<CleanupOnSignal> cleanup;
    if (!to_stdout) cleanup.emplace(*output, CleanupOnSignal::Scope::kOwnTempFileOnly);
    s = WriteFrames(*src, *parsed, *start, *stop, raw, to_stdout ? "" : *output, args->Has("force"),
                    cleanup ? &*cleanup : nullptr);
  }
  if (!s.ok()) return report(s);
  if (src->archive) {
    // Keep what the reads taught the index for the next run: checkpoints up to the last
    // frame (reads ahead of the checkpoints do not learn them); a read-only directory is
    // not an error for a read command.
    const uint64_t end = parsed->length + *stop * parsed->header.frame_bytes();
    Status saved = src->archive->IndexUpTo(src->member, end);
    if (saved.ok()) saved = src->archive->SaveIndex();
    if (!saved.ok()) {
      PrintMessage("warning: index not saved: " + saved.message());
    }
  }
  warnings.Flush();
  return kExitOk;
}

namespace {

using FailFn = std::function<void(const std::string&)>;

// The directory, through libzip as an independent parser: the same entries, the same sizes,
// CRCs and methods.
void CheckDirectoryWithLibzip(const ZipDirectory& dir, const std::string& path,
                              const FailFn& fail) {
  int err = 0;
  // zip_discard, not zip_close: nothing is written, and it always frees.
  std::unique_ptr<zip_t, void (*)(zip_t*)> z(zip_open(path.c_str(), ZIP_RDONLY, &err), zip_discard);
  if (!z) {
    zip_error_t ze;
    zip_error_init_with_code(&ze, err);
    fail(path + ": libzip, an independent zip parser, refuses the archive (" +
         zip_error_strerror(&ze) +
         "), though npz reads it: other zip tools may refuse it too (unzip -t and Python's "
         "zipfile may tell which entry)");
    zip_error_fini(&ze);
    return;
  }
  const zip_int64_t n = zip_get_num_entries(z.get(), 0);
  if (n != static_cast<zip_int64_t>(dir.entries.size())) {
    fail(path + ": libzip counts " + std::to_string(n) + " entries, the directory has " +
         std::to_string(dir.entries.size()));
    return;
  }
  for (zip_int64_t i = 0; i < n; ++i) {
    const ZipEntry& e = dir.entries[static_cast<size_t>(i)];
    zip_stat_t zs;
    zip_stat_init(&zs);
    if (zip_stat_index(z.get(), static_cast<zip_uint64_t>(i), ZIP_FL_ENC_RAW, &zs) != 0) {
      fail(path + ": entry " + Shown(e.name) + ": libzip cannot stat it: " + zip_strerror(z.get()));
      continue;
    }
    std::string diff;
    // libzip hands names out as C strings and cannot show one with a NUL byte (it makes
    // the NUL a space): such a name is not compared (the reader skips that member anyway).
    const bool has_nul = e.name.find('\0') != std::string::npos;
    if ((zs.valid & ZIP_STAT_NAME) && !has_nul && e.name != zs.name) diff += " name";
    if ((zs.valid & ZIP_STAT_SIZE) && e.uncompressed_size != zs.size) diff += " size";
    if ((zs.valid & ZIP_STAT_COMP_SIZE) && e.compressed_size != zs.comp_size) {
      diff += " compressed size";
    }
    if ((zs.valid & ZIP_STAT_CRC) && e.crc32 != zs.crc) diff += " CRC-32";
    if ((zs.valid & ZIP_STAT_COMP_METHOD) && e.method != zs.comp_method) diff += " method";
    if (!diff.empty()) {
      fail(path + ": entry " + Shown(e.name) + ": the directory and libzip disagree on" + diff);
    }
  }
}

// How the size and CRC-32 the data gave differ from the directory's entry `e` (": ..."), or
// "" when they agree.
std::string SizeOrCrcMismatch(const ZipEntry& e, uint64_t size, uint32_t crc) {
  if (size != e.uncompressed_size) {
    return ": " + std::to_string(size) + " bytes, the directory says " +
           std::to_string(e.uncompressed_size);
  }
  if (crc == e.crc32) return std::string();
  char text[96];
  std::snprintf(text, sizeof text, ": CRC-32 mismatch: directory %08" PRIx32 ", data %08" PRIx32,
                e.crc32, crc);
  return text;
}

// Reads member i through, computing its CRC-32 here (not trusting the reader's own check)
// and keeping its first bytes for the .npy header check.
Status ReadMemberThrough(Archive& a, size_t i, ProgressBar& bar, uint64_t done, uint32_t* crc,
                         uint64_t* size, std::string* head) {
  NPZ_ASSIGN_OR_RETURN(std::shared_ptr<MemberReader> reader, a.OpenMember(i));
  std::vector<std::byte> buf(kChunk);
  uint32_t running = 0;
  uint64_t offset = 0;
  while (true) {
    NPZ_ASSIGN_OR_RETURN(size_t n, reader->ReadAt(offset, buf));
    if (n == 0) break;
    running = Crc32(running, buf.data(), n);
    if (head->size() < NpyHeader::kMaxHeaderChars + 64) {
      head->append(reinterpret_cast<const char*>(buf.data()),
                   std::min<size_t>(n, NpyHeader::kMaxHeaderChars + 64 - head->size()));
    }
    offset += n;
    bar.Update(done + offset);
  }
  *crc = running;
  *size = offset;
  return Status::Ok();
}

Status CheckEntryData(const Archive& a, const ZipEntry& e, const std::string& what);

// Every byte of member i: size, CRC-32 and (for a .npy) its header.
void VerifyMemberBytes(Archive& a, size_t i, ProgressBar& bar, uint64_t done, const FailFn& fail) {
  const ArchiveMember& m = a.members()[i];
  const std::string name = a.path() + ": member " + m.path;
  if (m.open_errno != 0) {
    fail(AboutMember(name, m.path, m.open_error.empty() ? "cannot be read" : m.open_error));
    return;
  }
  uint32_t crc = 0;
  uint64_t size = 0;
  std::string head;
  Status status = ReadMemberThrough(a, i, bar, done, &crc, &size, &head);
  if (!status.ok()) {
    fail(AboutMember(name, m.path, status.message()));
    return;
  }
  if (const std::string mismatch = SizeOrCrcMismatch(m.entry, size, crc); !mismatch.empty()) {
    fail(name + mismatch);
    return;
  }
  if (m.entry.method == 8 && m.entry.uncompressed_size == 0) {
    // A reader stops at the directory's size, here before any byte: the deflate data
    // itself must hold nothing either.
    if (Status s = CheckEntryData(a, m.entry, name); !s.ok()) {
      fail(s.message());
      return;
    }
  }
  if (IsNpyName(m.path)) {
    auto parsed = ReadNpyHeaderOf(
        size,
        [&](uint64_t off, std::span<std::byte> dest) -> Status {
          if (off + dest.size() > head.size()) {
            return Status::Error(EINVAL, name + ": header longer than numpy's limit");
          }
          std::memcpy(dest.data(), head.data() + off, dest.size());
          return Status::Ok();
        },
        name);
    if (!parsed.ok()) {
      fail(parsed.status().message());
    } else if (const NpyHeader& h = parsed->header;
               !h.has_object() && size > parsed->length + h.data_bytes()) {
      // numpy reads what the header describes and ignores the rest: frames written after
      // a header that was never updated (a writer that died) are out of numpy's sight.
      fail(name + ": " + std::to_string(size - parsed->length - h.data_bytes()) +
           " bytes after the data its header describes (shape " + ShapeText(h.shape()) +
           "); numpy ignores them");
    }
  }
}

// The entries of the central directory that no member shows: names the reader skips ('..',
// NUL, too long), entries whose bytes overlap another's, duplicates the last entry hides,
// files that are also directories. Empty directory entries ("x/") hold nothing to check.
std::vector<size_t> EntriesNotListed(const Archive& a) {
  std::unordered_set<size_t> listed;
  for (const ArchiveMember& m : a.members()) listed.insert(m.entry_index);
  std::vector<size_t> out;
  const std::vector<ZipEntry>& entries = a.directory().entries;
  for (size_t e = 0; e < entries.size(); ++e) {
    if (listed.count(e) != 0) continue;
    const ZipEntry& entry = entries[e];
    if (!entry.name.empty() && entry.name.back() == '/' && entry.uncompressed_size == 0 &&
        entry.compressed_size == 0) {
      continue;
    }
    out.push_back(e);
  }
  return out;
}

// Checks an entry the reader skips straight from the archive file: its data as the directory
// describes it (stored, or inflated here) must have the directory's size and CRC-32.
// One that cannot be checked at all (encrypted, unknown method) is an error that says so.
Status CheckEntryData(const Archive& a, const ZipEntry& e, const std::string& what) {
  if (e.encrypted() || (e.method != 0 && e.method != 8)) {
    return Status::Error(
        ENOTSUP, what + " was not checked: " +
                     (e.encrypted() ? std::string("it is encrypted")
                                    : "it uses compression method " + std::to_string(e.method)));
  }
  const uint64_t file_size = a.directory().archive_size;
  if (e.data_offset > file_size || e.compressed_size > file_size - e.data_offset) {
    return Status::Error(EIO, what + ": its data runs past the end of the archive");
  }
  const bool deflated = e.method == 8;
  std::unique_ptr<InflateEngine> engine;  // zlib, the reference decoder
  if (deflated) {
    NPZ_ASSIGN_OR_RETURN(engine, MakeZlibEngine());
  }
  std::vector<std::byte> in(kChunk), out(kChunk);
  uint32_t crc = 0;
  uint64_t size = 0, read = 0;
  bool ended = !deflated;
  while (read < e.compressed_size) {
    const size_t want = static_cast<size_t>(std::min<uint64_t>(kChunk, e.compressed_size - read));
    NPZ_ASSIGN_OR_RETURN(size_t got,
                         PreadFull(a.fd(), in.data(), want, e.data_offset + read, a.path()));
    if (got != want) {
      return Status::Error(EIO, what + ": its data runs past the end of the archive");
    }
    read += got;
    if (!deflated) {
      crc = Crc32(crc, in.data(), got);
      size += got;
      continue;
    }
    // Until this input is used up and the engine holds no output back (a full output
    // buffer may leave some behind even when the input is all taken).
    std::span<const std::byte> rest(in.data(), got);
    while (!ended) {
      Result<InflateEngine::Step> step = engine->Inflate(rest, out);
      if (!step.ok()) return step.status().WithContext(what);
      crc = Crc32(crc, out.data(), step->produced);
      size += step->produced;
      rest = rest.subspan(step->consumed);
      ended = step->ended;
      if (rest.empty() && step->produced < out.size()) break;
      if (step->consumed == 0 && step->produced == 0) {
        return Status::Error(EIO, what + ": corrupt deflate data (no progress)");
      }
    }
    if (ended) break;
  }
  if (!ended) return Status::Error(EIO, what + ": its deflate data ends early");
  if (const std::string mismatch = SizeOrCrcMismatch(e, size, crc); !mismatch.empty()) {
    return Status::Error(EIO, what + mismatch);
  }
  return Status::Ok();
}

}  // namespace

int RunVerify(const std::vector<std::string>& raw_args) {
  auto args = ParseArgs(raw_args, {});
  if (!args.ok()) return UsageError("verify", args.status().message());
  if (args->help) return PrintCommandHelp("verify");
  if (args->positional.size() != 1) return UsageError("verify", "expected one ARCHIVE");
  const std::string path = args->positional[0];
  HeldWarnings warnings;
  auto archive = OpenArchive(path, warnings.Options(ToolArchiveOptions(VerifyMode::kOff)));
  warnings.Flush();
  if (!archive.ok()) return ReportError(archive.status());
  Archive& a = **archive;
  int bad = 0;
  FailFn fail = [&](const std::string& message) {
    ++bad;
    warnings.DropRepeatedBy(message);
    PrintMessage(message);
  };
  CheckDirectoryWithLibzip(a.directory(), path, fail);
  uint64_t total = 0;
  for (const auto& m : a.members()) {
    if (m.open_errno == 0) total += m.entry.uncompressed_size;
  }
  ProgressBar bar("verify " + BaseName(path), total);
  uint64_t done = 0;
  for (size_t i = 0; i < a.members().size(); ++i) {
    VerifyMemberBytes(a, i, bar, done, fail);
    warnings.Flush();  // what this member's failures did not repeat
    if (a.members()[i].open_errno == 0) done += a.members()[i].entry.uncompressed_size;
  }
  // What the reader skips is not listed, but numpy or unzip may still read it: its bytes
  // are checked too, from the archive file. An entry whose bytes overlap another's is
  // damage (numpy and zipfile refuse the archive), whatever its data holds.
  const std::vector<size_t> unlisted = EntriesNotListed(a);
  const std::vector<std::string> overlaps = EntryConflicts(a.directory().entries);
  for (size_t e : unlisted) {
    const ZipEntry& entry = a.directory().entries[e];
    if (!overlaps[e].empty()) {
      fail(path + ": entry \"" + Shown(entry.name) + "\": " + overlaps[e]);
      continue;
    }
    const std::string what =
        path + ": entry \"" + Shown(entry.name) + "\" (not listed: the reader skips it)";
    Status s = CheckEntryData(a, entry, what);
    if (!s.ok()) {
      fail(s.message());
    } else {
      PrintMessage("note: " + what + ": checked, CRC-32 OK");
    }
  }
  if (bad > 0) return kExitError;
  bar.Finish();
  const size_t n = a.members().size();
  std::printf("%s: %zu member%s OK", path.c_str(), n, n == 1 ? "" : "s");
  if (!unlisted.empty()) {
    std::printf(", and %zu entr%s the reader skips", unlisted.size(),
                unlisted.size() == 1 ? "y" : "ies");
  }
  std::printf("\n");
  return kExitOk;
}

int RunIndex(const std::vector<std::string>& raw_args) {
  auto args = ParseArgs(raw_args, {kIndexOptionSpec});
  if (!args.ok()) return UsageError("index", args.status().message());
  if (args->help) return PrintCommandHelp("index");
  if (args->positional.size() != 1) return UsageError("index", "expected one ARCHIVE");
  const std::string path = args->positional[0];
  // The reader logs a corrupt member's CRC-32 mismatch, and BuildIndex then fails with the
  // same message: said once.
  HeldWarnings warnings;
  ArchiveOptions options = ToolArchiveOptions();
  ApplyIndexOption(*args, path, options);
  if (!options.index_enabled) return UsageError("index", "--index off leaves nothing to do");
  auto archive = OpenArchive(path, warnings.Options(std::move(options)));
  warnings.Flush();
  if (!archive.ok()) return ReportError(archive.status());
  Archive& a = **archive;

  uint64_t total = 0;
  size_t count = 0, seekable = 0;
  for (size_t i = 0; i < a.members().size(); ++i) {
    const ArchiveMember& m = a.members()[i];
    if (m.open_errno == 0 && m.entry.method == 8) {
      total += m.entry.uncompressed_size;
      ++count;
      if (a.index_state(i) == IndexState::kSeekable) ++seekable;
    }
  }
  if (count == 0) {
    std::printf("%s: no deflated members, nothing to index\n", path.c_str());
    return kExitOk;
  }
  if (seekable == count) {
    std::printf(
        "%s: every deflated member is seekable (its seek table is its index): "
        "nothing to save\n",
        path.c_str());
    return kExitOk;
  }
  const bool was_dirty = a.index_dirty();
  ProgressBar bar("index " + BaseName(path), total);
  uint64_t done = 0;
  for (size_t i = 0; i < a.members().size(); ++i) {
    const ArchiveMember& m = a.members()[i];
    if (m.open_errno != 0 || m.entry.method != 8) continue;
    Status s = a.BuildIndex(i, bar.CallbackFrom(done));
    if (!s.ok()) warnings.DropRepeatedBy(s.message());
    warnings.Flush();
    if (!s.ok()) return ReportError(s);
    done += m.entry.uncompressed_size;
    bar.Update(done);
  }
  const bool changed = was_dirty || a.index_dirty();
  Status s = a.SaveIndex();
  warnings.Flush();
  if (!s.ok()) return ReportError(s);
  bar.Finish();
  std::printf(
      "%s: indexed %zu deflated member%s; %s %s\n", path.c_str(), count - seekable,
      count - seekable == 1 ? "" : "s",
      changed ? "index saved to" : "the index was complete already in",
      (changed || a.LoadedIndexPath().empty() ? a.IndexPath() : a.LoadedIndexPath()).c_str());
  return kExitOk;
}

}  // namespace npzfs::tool
