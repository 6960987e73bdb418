// `npz`: the offline companion of npzfs. The numpyWriter operations (readFrames, zipNpyFiles,
// writeArray) plus listing, verification, indexing, spool recovery and unmount-and-wait, on
// archives that are not mounted. This file holds main() and the help texts; each subcommand
// lives in npz_read.cc (ls, frames, verify, index), npz_write.cc (pack, add, recover) or
// npz_umount.cc.
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "tools/npz_cli.h"
#include "tools/signal_cleanup.h"

#ifndef NPZFS_VERSION
#define NPZFS_VERSION "unknown"
#endif

namespace npzfs::tool {

const std::vector<Command>& Commands() {
  static const std::vector<Command> kCommands = {
      {"ls", "list the members of an archive: dtype, shape, method, sizes, index state",
       R"(Usage: npz ls ARCHIVE [--json] [--index DIR|off]

Lists every member of ARCHIVE (.npz or any zip): name, dtype, shape, compression method,
compressed and uncompressed size, ratio, and the state of the random-access index
(stored members need none; deflated ones: none, partial or complete). The .npy header of
each member is read through the archive reader, so only its first bytes are inflated.

Options:
  --json                 one JSON array of objects instead of a table
  --index DIR|off        where the index is kept, as the mount's -o index= (default:
                         next to the archive, or the runtime directory's if that
                         directory is not writable, where a mount keeps it)

Examples:
  npz ls data.npz
  npz ls data.npz --json | python3 -m json.tool
)",
       RunLs},
      {"frames", "write frames [START, STOP) of a .npy or of an archive member",
       R"(Usage: npz frames ARCHIVE[:KEY] START STOP [-o OUT.npy [--force] | --raw]
                  [--index DIR|off]

numpyWriter's readFrames: frames START (inclusive) to STOP (exclusive) along the growth
axis (axis 0, or the last axis of a Fortran-order array) of a .npy file, or of member KEY
of an .npz (KEY with or without ".npy"). Only the bytes of those frames are read; for a
deflated member the saved random-access index is used and extended (and saved again), and
nothing beyond the span holding the last requested frame (about 256 KiB) is inflated.

The output is a valid .npy holding exactly those frames, written atomically (a temp file
renamed over OUT.npy), or with --raw the frame bytes alone on stdout. Without -o or --raw,
the .npy goes to stdout (refused if stdout is a terminal). An existing OUT.npy is replaced
only with --force, and only if it is a regular file (never a device, FIFO or symlink), and
never when it is the file the frames are read from.

Options:
  -o, --output OUT.npy   write a .npy here ("-" for stdout)
  -f, --force            replace an existing OUT.npy
  --raw                  write the raw frame bytes to stdout, no header
  --index DIR|off        where the index is kept, as the mount's -o index= (default:
                         next to the archive, or the runtime directory's if that
                         directory is not writable, where a mount keeps it)

Examples:
  npz frames data.npz:adc 5 8 -o frames.npy     # readFrames('adc', 5, 8)
  npz frames file.npy 50 100 -o part.npy        # readFrames(50, 100)
  npz frames data.npz:adc.npy 0 1 --raw | xxd | head
)",
       RunFrames},
      {"pack", "zip .npy files into an archive (numpyWriter zipNpyFiles)",
       R"(Usage: npz pack OUT.npz FILE.npy... [--key K]... [--compress[=LEVEL]] [--threads N]
                [--force]

numpyWriter's zipNpyFiles: writes OUT.npz holding each FILE.npy as a member. Members are
streamed from the files (never held in memory). Keys default to the file names without
".npy"; give --key once per file to choose them (in order). Each input must be a valid
.npy. Members are stored (like np.savez) unless --compress deflates them (like
np.savez_compressed; LEVEL 0..9, default 6). Deflate runs on all cores, in independent
256 KiB chunks recorded in a seek table, so npzfs reads the members at random from the first
read; every zip reader still sees plain deflate. An existing OUT.npz is refused unless
--force is given; it is then replaced atomically: on any error it is left as it was and no
partial file remains. (npz add adds members to an existing archive.)

Options:
  --key K               member name for the next file (".npy" is appended if missing)
  --compress[=LEVEL]    deflate members
  --threads N           deflate on N threads (default: one per online CPU)
  -f, --force           replace an existing OUT.npz

Examples:
  npz pack data.npz adc.npy tx.npy --compress
  npz pack data.npz run1/adc.npy run2/adc.npy --key adc1 --key adc2
)",
       RunPack},
      {"add", "add one .npy to an existing archive (numpyWriter writeArray)",
       R"(Usage: npz add ARCHIVE KEY FILE.npy [--compress[=LEVEL]] [--threads N] [--copy]
               [--index DIR|off]

numpyWriter's writeArray: appends FILE.npy to ARCHIVE as member KEY (".npy" appended if
missing). The existing members stay byte-identical. Fails if KEY already exists. The member
is appended in place, over the old central directory, under an undo journal
(.ARCHIVE.npzfs-journal): it costs the new bytes, whatever the archive's size, and after
a crash the next npz command, mount or `npz recover` puts ARCHIVE back as it was. With
--copy the new archive is written beside the old one and renamed over it instead (a full
copy, with ARCHIVE's mode, and its group if you belong to it, owned by you; other programs
opening ARCHIVE meanwhile never see it mid-append). Either way ARCHIVE ends up as before or
complete. An archive you may not write is refused either way.
KEY must be valid UTF-8 with no path component over 255 bytes. Use `npz pack` to create a
new archive.

Options:
  --compress[=LEVEL]    deflate the new member (LEVEL 0..9, default 6)
  --threads N           deflate on N threads (default: one per online CPU)
  --copy                copy the archive and rename the copy over it
  --index DIR|off       the saved index to keep valid for the new archive, as the
                        mount's -o index= (default: where a mount keeps it)

Examples:
  npz add data.npz rx rx.npy
  npz add data.npz calib/gain gain.npy --compress
)",
       RunAdd},
      {"verify", "check every member's CRC-32 and .npy header",
       R"(Usage: npz verify ARCHIVE

Reads every member completely, checks its CRC-32 against the central directory and, for
.npy members, that the header parses and the data size matches it. Entries that are not
listed because the reader skips them (a '..' component, a NUL byte, a name too long) are
checked as well, from the archive file; one skipped because the directory's sizes make its
bytes overlap another entry's is an error. The directory listing is also cross-checked with
libzip. Prints one line per bad member and exits non-zero if there is any.

Examples:
  npz verify data.npz && echo intact
)",
       RunVerify},
      {"index", "build the random-access index of every deflated member",
       R"(Usage: npz index ARCHIVE [--index DIR]

Runs the first inflate pass over every deflated member now and saves the random-access
index where a mount looks for it, so later reads through the mount or `npz frames` start
anywhere at once. Stored members need no index. The index goes next to the archive
(.ARCHIVE.npzfs-index), or, if that directory is not writable (a read-only dataset), into
the runtime directory ($XDG_RUNTIME_DIR/npzfs/index, /run/npzfs/index for root, else
/tmp/npzfs-UID/index), where a mount of the archive by the same user finds it. Run as the
dataset's owner, it saves the index beside the archive for every reader.

Options:
  --index DIR   save it in DIR instead, for mounts with -o index=DIR (DIR may hold the
                indexes of many archives, each named after its archive's path)

Examples:
  npz index data.npz
  npz index /datasets/run7.npz --index /scratch/npzfs-index
)",
       RunIndex},
      {"recover", "finalize a spool left by a daemon that died",
       R"(Usage: npz recover ARCHIVE [--spool DIR] [--compress[=LEVEL] | --store] [--index DIR|off]

If an npzfs daemon died before finalizing, its spool (by default .ARCHIVE.npzfs-spool next
to the archive) still holds every complete frame written. This adds those members to
ARCHIVE (creating it if needed), atomically, and removes the spool. A trailing partial
frame is dropped. Mounting the archive again does the same on the next unmount.

First, if an append was interrupted (a journal .ARCHIVE.npzfs-journal is there), ARCHIVE
is put back exactly as it was before that append (every npz command does this too).

Options:
  --spool DIR           the spool directory, if the mount used -o spool=DIR (it must hold
                        the spool's lock file .npzfs-lock: any other directory is refused)
  --compress[=LEVEL]    deflate the recovered members at LEVEL (default 6)
  --store               store them
                        (neither: as the mount that made the spool would have, at the
                        level of its -o compress, which the spool records; else stored)
  --index DIR|off       the saved index to keep valid for the new archive, as the
                        mount's -o index= (default: where a mount keeps it)

Examples:
  npz recover data.npz
  npz recover data.npz --spool /fast/spool
)",
       RunRecover},
      {"umount", "unmount an npzfs mount and wait until its archive is finalized",
       R"(Usage: npz umount MOUNTPOINT [--timeout SECONDS]

Unmounts the npzfs mount at MOUNTPOINT with `fusermount3 -u`, waits until the npzfs daemon
has finalized the new members into the archive and exited, and reports the result: exit 0
if finalize succeeded (or there was nothing to finalize, as with -o ro), non-zero with the
daemon's reason if it failed. (`fusermount3 -u` alone returns before finalize has finished.)
While it waits it shows the finalize progress: a bar on a terminal, otherwise a line every
few seconds.

Only npzfs mounts are touched: MOUNTPOINT (or the symlink's target, if it is a symlink)
must be listed as fuse.npzfs in /proc/self/mountinfo; any other mount is refused and left
mounted. So is an npzfs mount that is also mounted elsewhere by `mount --bind`, the bind
mount or the original (the message names the other): the daemon finalizes only once the
last of them is gone. If the original was detached with `umount -l` and a single bind mount
of it is left, that one is unmounted as the original would be. If the daemon had died,
the stale mount is cleared, nothing is finalized, the exit status is non-zero and the
message gives the exact `npz recover /abs/ARCHIVE` command that adds its new members (with
the mount's --spool and --compress, which the daemon recorded), or says there is nothing to
recover when its spool holds no member.

The mount is found without asking its daemon; only the daemon can tell its pid and result
file, and one that does not answer within 10 s (or --timeout, if shorter) -- stopped with
SIGSTOP, or hung -- is reported (exit non-zero, with what to do) and its mount left alone.
Another user's mount is refused, naming its owner: only the owner (or root) may unmount
it, and its daemon answers no one else, root included, unless it was mounted with
-o allow_other.

Options:
  --timeout SECONDS   bounds the whole command: the daemon's answers (10 s without it) and
                      the wait for finalize (no limit without it); exit non-zero then
                      (finalize goes on)

Examples:
  npz umount mnt && python3 -c 'import numpy; numpy.load("data.npz")'
)",
       RunUmount},
  };
  return kCommands;
}

namespace {

void PrintMainHelp(FILE* out) {
  std::fprintf(out,
               "Usage: npz COMMAND [ARGS...]\n\n"
               "Work with NumPy archives (.npz) and .npy files without loading them into memory;\n"
               "the offline companion of the npzfs filesystem.\n\nCommands:\n");
  for (const Command& c : Commands()) std::fprintf(out, "  %-8s %s\n", c.name, c.summary);
  std::fprintf(
      out,
      "\nRun 'npz COMMAND --help' for a command's options and examples.\n\n"
      "Examples:\n"
      "  npz pack data.npz adc.npy tx.npy --compress\n"
      "  npz frames data.npz:adc 5 8 -o frames.npy\n"
      "  npz ls data.npz\n\n"
      "Long work shows a progress bar on stderr when it is a terminal.\n"
      "Exit status: 0 ok, 1 error (the message names the file and the cause), 2 bad usage.\n");
}

int UnknownCommand(const std::string& name) {
  std::fprintf(stderr, "npz: unknown command '%s'\nTry 'npz --help'.\n", name.c_str());
  return kExitUsage;
}

// What a command printed to stdout is only written when the buffer is flushed: a full disk
// (npz ls --json > out.json) or a closed stdout shows up here, and must not exit 0.
int CheckedStdout(int rc) {
  if (std::fflush(stdout) == 0 && std::ferror(stdout) == 0) return rc;
  std::fprintf(stderr, "npz: stdout: write failed: %s\n", std::strerror(errno));
  return rc == kExitOk ? kExitError : rc;
}

}  // namespace
}  // namespace npzfs::tool

int main(int argc, char** argv) {
  using namespace npzfs::tool;
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty()) {
    PrintMainHelp(stderr);
    return kExitUsage;
  }
  const std::string& first = args[0];
  if (first == "--help" || first == "-h" || first == "help") {
    if (first == "help" && args.size() > 1) {
      if (PrintCommandHelp(args[1]) != kExitOk) return UnknownCommand(args[1]);
      return CheckedStdout(kExitOk);
    }
    PrintMainHelp(stdout);
    return CheckedStdout(kExitOk);
  }
  if (first == kAfterSignal) {
    return RunAfterSignal(std::vector<std::string>(args.begin() + 1, args.end()));
  }
  if (first == "--version" || first == "-V") {
    std::printf("npz (npzfs) %s\n", NPZFS_VERSION);
    return CheckedStdout(kExitOk);
  }
  for (const Command& c : Commands()) {
    if (first == c.name) {
      const std::vector<std::string> rest(args.begin() + 1, args.end());
      if (const int rc = RecoverBeforeCommand(c.name, rest); rc != kExitOk) return rc;
      return CheckedStdout(c.run(rest));
    }
  }
  return UnknownCommand(first);
}
