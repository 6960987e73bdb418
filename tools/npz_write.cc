// npz pack, npz add, npz recover: the subcommands that write archives, and the recovery of
// an interrupted append that runs before every subcommand.
//
// All three hand the work to npzfs/archive_writer.h (or core/write/spool.h): pack writes a
// temp file and renames it into place; add appends in place under an undo journal (or, with
// --copy, builds a copy and renames it); recover finalizes a dead daemon's spool. An error
// leaves the old archive (or no output) behind. Inputs are validated first and passed as
// file ranges of open fds: the writer streams them, nothing is loaded whole.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "core/base/mount_table.h"
#include "core/npy/frame_layout.h"
#include "core/write/spool.h"
#include "core/zip/append_journal.h"
#include "npzfs/archive.h"
#include "npzfs/archive_writer.h"
#include "npzfs/zip_directory.h"
#include "tools/npz_cli.h"
#include "tools/npz_files.h"
#include "tools/progress.h"
#include "tools/signal_cleanup.h"

namespace npzfs::tool {
namespace {

NewMember MemberFromFile(const std::string& name, const NpyInput& input) {
  NewMember member;
  member.name = name;
  member.leading_chunk = input.header_length;  // deflate: the header is a chunk of its own
  MemberPiece piece;
  piece.fd = input.fd.get();
  piece.offset = 0;
  piece.length = input.size;
  member.pieces.push_back(std::move(piece));
  return member;
}

// --threads N: deflate workers (default 0: one per online CPU).
Result<size_t> ParseThreadsOption(const ParsedArgs& args) {
  const std::optional<std::string> text = args.Last("threads");
  if (!text) return size_t{0};
  auto n = ParseUint(*text, "--threads");
  if (!n.ok() || *n == 0) {
    return Status::Error(EINVAL, "--threads must be a positive integer, not '" + *text + "'");
  }
  if (*n > 1024) return Status::Error(EINVAL, "--threads " + *text + " is not 1..1024");
  return static_cast<size_t>(*n);
}

// A new member `name` whose numpy key an old member of `dir` already has under another name
// ("rx" and "rx.npy" are both z["rx"]): numpy would show only one of them. EEXIST naming
// both. Checked under the archive's lock (WriteOptions::check_existing).
Status CheckNumpyKeyFree(const std::string& archive, const ZipDirectory& dir,
                         const std::string& name) {
  for (const ZipEntry& e : dir.entries) {
    if (e.name != name && NumpyKey(e.name) == NumpyKey(name)) {
      return Status::Error(EEXIST, archive + ": member " + Shown(e.name) +
                                       " already has the key '" +
                                       Shown(std::string(NumpyKey(name))) + "' numpy gives " +
                                       Shown(name) + ": numpy would show only one of them");
    }
  }
  return Status::Ok();
}

// A mount lists the members it found when it was mounted, so a member added meanwhile shows
// there only after a remount: say so for each npzfs mount of `archive`. An npzfs mount's
// source is the path it was given (made absolute, a symlink kept as it is), so the archive is
// recognised by its file (device and inode), whichever path or link either side used.
void NoteMountsOf(const std::string& archive, const std::string& member) {
  struct stat target;
  if (::stat(archive.c_str(), &target) != 0) return;
  Result<std::vector<MountEntry>> table = ReadMountTable();
  if (!table.ok()) return;
  for (const MountEntry& e : *table) {
    struct stat st;
    if (e.fstype != kNpzfsMountType || ::stat(e.source.c_str(), &st) != 0 ||
        st.st_dev != target.st_dev || st.st_ino != target.st_ino) {
      continue;
    }
    PrintMessage("note: " + archive + " is mounted on " + e.mount_point +
                 ", which lists the members it found when it was mounted: " + Shown(member) +
                 " shows there after a remount");
  }
}

}  // namespace

int RecoverBeforeCommand(const std::string& command, const std::vector<std::string>& args) {
  if (command == "recover") return kExitOk;  // RunRecover reports what it restores
  // The argument of umount is a mount point, never an archive, and a stat of it waits for the
  // daemon: forever, if it is stopped (npz umount must not hang on it).
  if (command == "umount") return kExitOk;
  for (const std::string& arg : args) {
    if (arg.empty() || arg[0] == '-') continue;
    // "ARCHIVE:KEY" (npz frames) names ARCHIVE.
    std::vector<std::string> candidates = {arg};
    for (size_t colon = arg.rfind(':'); colon != std::string::npos && colon > 0;
         colon = arg.rfind(':', colon - 1)) {
      candidates.push_back(arg.substr(0, colon));  // either part may hold colons
    }
    for (const std::string& path : candidates) {
      struct stat st;
      if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
      auto recovered = RecoverInterruptedAppend(path, PrintMessage);
      if (!recovered.ok()) return ReportError(recovered.status());
    }
  }
  return kExitOk;
}

int RunPack(const std::vector<std::string>& raw_args) {
  auto args = ParseArgs(raw_args, {{"key", OptionSpec::Kind::kValue, 'k'},
                                   {"compress", OptionSpec::Kind::kOptionalValue, 0},
                                   {"threads", OptionSpec::Kind::kValue, 0},
                                   {"force", OptionSpec::Kind::kFlag, 'f'}});
  if (!args.ok()) return UsageError("pack", args.status().message());
  if (args->help) return PrintCommandHelp("pack");
  if (args->positional.size() < 2) return UsageError("pack", "expected OUT.npz and FILE.npy...");
  auto level = ParseCompressOption(*args);
  if (!level.ok()) return UsageError("pack", level.status().message());
  auto threads = ParseThreadsOption(*args);
  if (!threads.ok()) return UsageError("pack", threads.status().message());

  const std::string out = args->positional[0];
  struct stat st;
  if (!args->Has("force") && lstat(out.c_str(), &st) == 0) {
    return ReportError(Status::Error(
        EEXIST, out + ": exists; npz pack writes a new archive (--force replaces it, 'npz add " +
                    out + " KEY FILE.npy' adds to it)"));
  }
  const std::vector<std::string> files(args->positional.begin() + 1, args->positional.end());
  std::vector<std::string> keys;
  if (args->Has("key")) {
    for (const auto& k : args->options.at("key")) keys.push_back(k.value_or(""));
    if (keys.size() != files.size()) {
      return UsageError("pack", "got " + std::to_string(keys.size()) + " --key for " +
                                    std::to_string(files.size()) +
                                    " files: give one per file, or none");
    }
  } else {
    for (const auto& f : files) keys.push_back(StemOf(f));
  }

  std::vector<NpyInput> inputs;
  std::vector<NewMember> members;
  std::set<std::string> names;
  uint64_t total = 0;
  for (size_t i = 0; i < files.size(); ++i) {
    auto input = OpenNpyInput(files[i]);
    if (!input.ok()) return ReportError(input.status());
    auto name = MemberNameForKey(keys[i]);
    if (!name.ok()) return ReportError(name.status().WithContext(files[i]));
    if (!names.insert(*name).second) {
      return ReportError(Status::Error(
          EINVAL, files[i] + ": duplicate member name " + Shown(*name) + " (use --key to rename)"));
    }
    total += input->size;
    inputs.push_back(std::move(*input));
    members.push_back(MemberFromFile(*name, inputs.back()));
  }

  // OUT (or the file a symlink there names) is replaced: an input there would become a
  // member of its own replacement, which is never what was meant.
  if (stat(out.c_str(), &st) == 0) {
    for (const NpyInput& in : inputs) {
      struct stat in_st;
      if (fstat(in.fd.get(), &in_st) == 0 && in_st.st_dev == st.st_dev &&
          in_st.st_ino == st.st_ino) {
        return ReportError(Status::Error(EINVAL, out + ": is one of the files to pack (" + in.path +
                                                     "); write the archive to another "
                                                     "file"));
      }
    }
  }

  ProgressBar bar("pack " + BaseName(out), total);
  WriteOptions options;
  options.compress_level = level->value_or(-1);
  options.threads = *threads;
  options.reject_existing_names = true;
  options.replace_existing = args->Has("force");  // also when made by another pack meanwhile
  options.progress = bar.Callback();
  options.log = PrintMessage;
  Status status;
  {
    CleanupOnSignal cleanup(out);
    status = WriteArchive(out, members, options);
  }
  if (!status.ok()) return ReportError(status);
  bar.Finish();
  return kExitOk;
}

// The archive's saved indexes, opened before an append so that CarryIndexes can rewrite
// them for the new archive afterwards (old members keep their offsets, so their checkpoints
// still hold, and the next reader needs no first pass for them). A sidecar is named after
// the path the archive was opened by: through a symlink, the link's and the file's are
// both carried (the append changes the file). None when there is nothing to carry (no
// sidecar, or an archive that cannot be read as it is; a stale sidecar is removed by
// CarryIndexes, as it holds nothing that applies).
std::vector<std::shared_ptr<Archive>> OpenIndexesToCarry(const std::string& archive,
                                                         const ParsedArgs& args) {
  std::vector<std::string> paths = {archive};
  if (std::string file = ResolveArchivePath(archive); file != archive) paths.push_back(file);
  std::vector<std::shared_ptr<Archive>> indexes;
  for (const std::string& path : paths) {
    ArchiveOptions options;
    options.background_index = false;  // nothing is read; only the sidecar is loaded
    ApplyIndexOption(args, path, options);
    if (!options.index_enabled) continue;
    auto opened = Archive::Open(path, options);
    if (!opened.ok()) continue;
    if ((*opened)->LoadedIndexPath().empty() &&
        ::access((*opened)->IndexPath().c_str(), F_OK) != 0) {
      continue;
    }
    indexes.push_back(*std::move(opened));
  }
  return indexes;
}

// Rewrites each index loaded before for the archive as it is now. A failure only costs the
// next reader a first pass: it is a warning.
void CarryIndexes(const std::vector<std::shared_ptr<Archive>>& before) {
  for (const std::shared_ptr<Archive>& index : before) {
    Status s = index->CarryIndexForward();
    if (!s.ok()) PrintMessage("warning: the saved index was not carried over: " + s.message());
  }
}

int RunAdd(const std::vector<std::string>& raw_args) {
  auto args = ParseArgs(raw_args, {{"compress", OptionSpec::Kind::kOptionalValue, 0},
                                   {"threads", OptionSpec::Kind::kValue, 0},
                                   {"copy", OptionSpec::Kind::kFlag, 0},
                                   kIndexOptionSpec});
  if (!args.ok()) return UsageError("add", args.status().message());
  if (args->help) return PrintCommandHelp("add");
  if (args->positional.size() != 3) return UsageError("add", "expected ARCHIVE KEY FILE.npy");
  auto level = ParseCompressOption(*args);
  if (!level.ok()) return UsageError("add", level.status().message());
  auto threads = ParseThreadsOption(*args);
  if (!threads.ok()) return UsageError("add", threads.status().message());
  const std::string archive = args->positional[0];
  const std::string key = args->positional[1];
  const std::string file = args->positional[2];

  struct stat st;
  if (stat(archive.c_str(), &st) != 0) {
    if (errno == ENOENT) {
      return ReportError(Status::Error(ENOENT, archive + ": no such archive (use 'npz pack " +
                                                   archive + " " + file + " --key " + Shown(key) +
                                                   "' to create one)"));
    }
    return ReportError(ErrnoStatus(errno, archive, "stat"));
  }
  {
    // The in-place append opens the archive for writing and so refuses one the caller may
    // not write; --copy only needs the directory, and would replace a write-protected
    // archive by rename. Both refuse it, with the same message, before anything is done.
    auto writable = OpenRegularFile(archive, O_RDWR);
    if (!writable.ok()) return ReportError(writable.status());
  }
  auto name = MemberNameForKey(key);
  if (!name.ok()) return ReportError(name.status().WithContext(archive + ": adding " + file));
  auto input = OpenNpyInput(file);
  if (!input.ok()) return ReportError(input.status());

  ProgressBar bar("add " + Shown(*name), input->size);
  WriteOptions options;
  options.compress_level = level->value_or(-1);
  options.threads = *threads;
  options.append_mode =
      args->Has("copy") ? WriteOptions::AppendMode::kCopy : WriteOptions::AppendMode::kInPlace;
  options.log = PrintMessage;
  options.reject_existing_names = true;
  options.check_existing = [&](const ZipDirectory& old) {
    return CheckNumpyKeyFree(archive, old, *name);
  };
  options.progress = bar.Callback();
  const auto indexes = OpenIndexesToCarry(archive, *args);
  Status status;
  {
    CleanupOnSignal cleanup(archive);
    status = AppendToArchive(archive, {MemberFromFile(*name, *input)}, options);
  }
  if (!status.ok()) return ReportError(status);
  CarryIndexes(indexes);
  bar.Finish();
  NoteMountsOf(archive, *name);
  return kExitOk;
}

namespace {

// After its journal was dealt with, the archive must read as a zip for recover to succeed:
// a journal set aside (another file's) may leave a file an append broke as it is.
Status CheckReadsAsZip(const std::string& archive) {
  ArchiveOptions options;
  options.index_enabled = false;
  options.background_index = false;
  auto opened = Archive::Open(archive, options);
  if (opened.ok()) return Status::Ok();
  return Status::Error(opened.status().code(),
                       opened.status().message() +
                           " (its append journal was dealt with as said above, and the file "
                           "was left as it is)");
}

}  // namespace

int RunRecover(const std::vector<std::string>& raw_args) {
  auto args = ParseArgs(raw_args, {{"spool", OptionSpec::Kind::kValue, 0},
                                   {"compress", OptionSpec::Kind::kOptionalValue, 0},
                                   {"store", OptionSpec::Kind::kFlag, 0},
                                   kIndexOptionSpec});
  if (!args.ok()) return UsageError("recover", args.status().message());
  if (args->help) return PrintCommandHelp("recover");
  if (args->positional.size() != 1) return UsageError("recover", "expected ARCHIVE");
  auto level = ParseCompressOption(*args);
  if (!level.ok()) return UsageError("recover", level.status().message());
  if (*level && args->Has("store")) {
    return UsageError("recover", "--compress and --store exclude each other");
  }
  const std::string archive = args->positional[0];
  const std::string spool = args->Last("spool").value_or(DefaultSpoolDir(archive));

  // An interrupted append first: the spool's members go to the archive as it was before.
  struct stat journal_st;
  const bool had_journal = ::lstat(AppendJournalPath(archive).c_str(), &journal_st) == 0;
  auto restored = RecoverInterruptedAppend(archive, PrintMessage);
  if (!restored.ok()) return ReportError(restored.status());
  struct stat st;
  if (::stat(spool.c_str(), &st) != 0 && errno == ENOENT) {
    // No spool (RecoverSpool would clean up under its lock): leftovers of a killed copy.
    auto removed = RemoveStaleTempFiles(archive, PrintMessage);
    if (!removed.ok()) return ReportError(removed.status());
    if (had_journal) {
      if (Status readable = CheckReadsAsZip(archive); !readable.ok()) {
        return ReportError(readable);
      }
    }
    if (*restored || had_journal || *removed > 0) {
      // A journal set aside or dropped (logged above) is recovered too: nothing else to do.
      std::printf("%s: %s; no spool to finalize\n", archive.c_str(),
                  *restored     ? "restored after an interrupted append"
                  : had_journal ? "its append journal was dealt with (see above)"
                                : "removed stale temp files");
      return kExitOk;
    }
  }
  ProgressBar bar("recover " + BaseName(archive), 0);
  WriteOptions options;
  // Neither option: as the spool records (the level of the mount that made it).
  options.compress_level =
      level->value_or(args->Has("store") ? Spool::kStoredLevel : Spool::kRecordedLevel);
  options.reject_existing_names = true;
  options.progress = bar.Callback();
  options.log = PrintMessage;
  const auto indexes = OpenIndexesToCarry(archive, *args);
  Status status = RecoverSpool(archive, spool, options, PrintMessage);
  if (!status.ok()) return ReportError(status);
  CarryIndexes(indexes);
  bar.Finish();
  std::printf("%s: recovered the spool %s\n", archive.c_str(), spool.c_str());
  return kExitOk;
}

}  // namespace npzfs::tool
