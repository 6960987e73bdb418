// Shared plumbing of the `npz` tool: the command table, argument parsing, error reporting.
//
// Every subcommand is a function `int Run(const std::vector<std::string>& args)` that parses
// its own arguments with ParseArgs, does its work through the core library and returns the
// process exit code. Errors are printed once, as "npz: <file>: <cause>" (core Status messages
// already name the file), and map to the exit codes below. Nothing here is thread-safe; the
// tool is single-threaded apart from the progress callbacks (see progress.h).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "npzfs/archive.h"
#include "npzfs/npy_reader.h"
#include "npzfs/status.h"

namespace npzfs::tool {

inline constexpr int kExitOk = 0;
inline constexpr int kExitError = 1;  // the work failed (bad input, I/O error, bad CRC...)
inline constexpr int kExitUsage = 2;  // the command line was wrong

struct Command {
  const char* name;
  const char* summary;  // one line for `npz --help`
  const char* help;     // full text for `npz NAME --help`, with examples
  int (*run)(const std::vector<std::string>& args);
};

const std::vector<Command>& Commands();

// One option a subcommand accepts. Options may appear anywhere among the positional
// arguments; "--" ends them. "--name=value" and "--name value" are both accepted.
struct OptionSpec {
  enum class Kind {
    kFlag,           // --raw
    kValue,          // --key K, -o OUT
    kOptionalValue,  // --compress or --compress=6 (the value only after '=')
  };
  std::string name;  // long name without dashes: "key"
  Kind kind = Kind::kFlag;
  char short_name = 0;  // 'o' for -o, 0 if none
};

struct ParsedArgs {
  std::vector<std::string> positional;
  // Long option name -> one entry per occurrence (nullopt: given without a value).
  std::map<std::string, std::vector<std::optional<std::string>>> options;
  bool help = false;

  bool Has(const std::string& name) const { return options.count(name) != 0; }
  // The last value given for `name`, if any.
  std::optional<std::string> Last(const std::string& name) const;
};

// Parses `args` (after the subcommand name). Unknown options and missing values are EINVAL
// with a message for the user. A lone "-" and negative numbers are positional.
Result<ParsedArgs> ParseArgs(const std::vector<std::string>& args,
                             const std::vector<OptionSpec>& specs);

// Prints "npz: <message>" to stderr and returns kExitError. Every line the tool prints to
// stderr goes through PrintMessage: control bytes in it (from member names, keys, paths) are
// escaped (EscapeControlBytes), so a name can neither drive the terminal nor cut the line.
void PrintMessage(const std::string& message);
int ReportError(const Status& status);
// Prints "npz <command>: <message>" and a hint to run --help; returns kExitUsage.
int UsageError(const std::string& command, const std::string& message);
// Prints the command's help text to stdout; returns kExitOk.
int PrintCommandHelp(const std::string& command);

// A member name or key as messages and the `ls` table show it: escaped, and cut if long
// (PrintableName, core/base/text_codec.h).
std::string Shown(const std::string& name);

// ReadNpyHeaderFrom, except that a source which does not start with the .npy magic is
// "NAME: not a .npy file (bad magic)", said once.
Result<ParsedNpyHeader> ReadNpyHeaderOf(uint64_t size, const ReadExactFn& read_exact,
                                        const std::string& name);

// A non-negative decimal integer, or EINVAL naming `what`.
Result<uint64_t> ParseUint(const std::string& text, const std::string& what);
// --compress[=LEVEL]: nullopt if absent, 6 (zlib's default, as np.savez_compressed) if given
// without a level, else the level (0..9).
Result<std::optional<int>> ParseCompressOption(const ParsedArgs& args);

// --index DIR | --index off, taken by every command that reads or saves the random-access
// index (ls, frames, index, add, recover), as the mount's -o index= is.
inline const OptionSpec kIndexOptionSpec{"index", OptionSpec::Kind::kValue, 0};
// Sets options.index_enabled, index_dir and index_fallback_dir for the archive at `archive`:
// the --index given, else where a mount keeps the index by default (DefaultIndexPlace: next
// to the archive, or in the runtime directory when the archive's directory is not
// writable, each with the other as a fallback to read), so each finds what the other saved.
void ApplyIndexOption(const ParsedArgs& args, const std::string& archive, ArchiveOptions& options);

// Before a subcommand runs: undoes an interrupted in-place append of every archive its
// arguments name (npz_write.cc). Returns kExitOk, or kExitError after printing why not.
int RecoverBeforeCommand(const std::string& command, const std::vector<std::string>& args);

// Subcommands, one per file (npz_read.cc, npz_write.cc, npz_umount.cc).
int RunLs(const std::vector<std::string>& args);
int RunFrames(const std::vector<std::string>& args);
int RunVerify(const std::vector<std::string>& args);
int RunIndex(const std::vector<std::string>& args);
int RunPack(const std::vector<std::string>& args);
int RunAdd(const std::vector<std::string>& args);
int RunRecover(const std::vector<std::string>& args);
int RunUmount(const std::vector<std::string>& args);

}  // namespace npzfs::tool
