#include "tools/npz_cli.h"

#include <cerrno>
#include <cstdio>
#include <span>
#include <string_view>

#include "core/base/runtime_dir.h"
#include "core/base/text_codec.h"
#include "npzfs/npy_header.h"

namespace npzfs::tool {
namespace {

bool LooksLikeNegativeNumber(const std::string& arg) {
  return arg.size() >= 2 && arg[0] == '-' && arg[1] >= '0' && arg[1] <= '9';
}

const OptionSpec* FindLong(const std::vector<OptionSpec>& specs, const std::string& name) {
  for (const auto& spec : specs) {
    if (spec.name == name) return &spec;
  }
  return nullptr;
}

const OptionSpec* FindShort(const std::vector<OptionSpec>& specs, char c) {
  for (const auto& spec : specs) {
    if (spec.short_name != 0 && spec.short_name == c) return &spec;
  }
  return nullptr;
}

}  // namespace

std::optional<std::string> ParsedArgs::Last(const std::string& name) const {
  auto it = options.find(name);
  if (it == options.end() || it->second.empty()) return std::nullopt;
  return it->second.back();
}

Result<ParsedArgs> ParseArgs(const std::vector<std::string>& args,
                             const std::vector<OptionSpec>& specs) {
  ParsedArgs parsed;
  bool options_ended = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (options_ended || arg == "-" || arg.empty() || arg[0] != '-' ||
        LooksLikeNegativeNumber(arg)) {
      parsed.positional.push_back(arg);
      continue;
    }
    if (arg == "--") {
      options_ended = true;
      continue;
    }
    if (arg == "--help" || arg == "-h") {
      parsed.help = true;
      continue;
    }
    const OptionSpec* spec = nullptr;
    std::optional<std::string> inline_value;
    std::string shown;  // the option as the user spelled it, for messages
    if (arg.rfind("--", 0) == 0) {
      std::string name = arg.substr(2);
      if (auto eq = name.find('='); eq != std::string::npos) {
        inline_value = name.substr(eq + 1);
        name.resize(eq);
      }
      spec = FindLong(specs, name);
      shown = "--" + name;
    } else {
      spec = FindShort(specs, arg[1]);
      shown = arg.substr(0, 2);
      if (arg.size() > 2) inline_value = arg.substr(2);  // -oOUT
    }
    if (spec == nullptr) return Status::Error(EINVAL, "unknown option " + shown);
    auto& slot = parsed.options[spec->name];
    switch (spec->kind) {
      case OptionSpec::Kind::kFlag:
        if (inline_value) return Status::Error(EINVAL, shown + " takes no value");
        slot.push_back(std::nullopt);
        break;
      case OptionSpec::Kind::kOptionalValue:
        slot.push_back(inline_value);
        break;
      case OptionSpec::Kind::kValue:
        if (inline_value) {
          slot.push_back(inline_value);
        } else if (i + 1 < args.size()) {
          slot.push_back(args[++i]);
        } else {
          return Status::Error(EINVAL, shown + " needs a value");
        }
        break;
    }
  }
  return parsed;
}

// For the terminal: control bytes escaped, newlines too, and bytes that are not UTF-8 as
// \xHH: a member name cannot forge a line or drive the terminal with escape sequences
// (every message is one line).
std::string ForTerminal(std::string_view message) {
  return PrintableName(message, std::string_view::npos);
}

void PrintMessage(const std::string& message) {
  std::fprintf(stderr, "npz: %s\n", ForTerminal(message).c_str());
}

int ReportError(const Status& status) {
  PrintMessage(status.message());
  return kExitError;
}

int UsageError(const std::string& command, const std::string& message) {
  std::fprintf(stderr, "npz %s: %s\nTry 'npz %s --help'.\n", command.c_str(),
               ForTerminal(message).c_str(), command.c_str());
  return kExitUsage;
}

std::string Shown(const std::string& name) { return PrintableName(name); }

Result<ParsedNpyHeader> ReadNpyHeaderOf(uint64_t size, const ReadExactFn& read_exact,
                                        const std::string& name) {
  // Shorter sources get ReadNpyHeaderFrom's own "only N bytes".
  constexpr uint64_t kShortest = 10;
  if (size >= kShortest) {
    std::string magic(NpyHeader::kMagic.size(), '\0');
    NPZ_RETURN_IF_ERROR(read_exact(0, std::as_writable_bytes(std::span(magic))));
    if (magic != NpyHeader::kMagic) {
      return Status::Error(EINVAL, name + ": not a .npy file (bad magic)");
    }
  }
  return ReadNpyHeaderFrom(size, read_exact, name);
}

int PrintCommandHelp(const std::string& command) {
  for (const Command& c : Commands()) {
    if (command == c.name) {
      std::fputs(c.help, stdout);
      return kExitOk;
    }
  }
  return kExitUsage;
}

Result<uint64_t> ParseUint(const std::string& text, const std::string& what) {
  if (text.empty()) {
    return Status::Error(EINVAL, what + " must be a non-negative integer, not ''");
  }
  uint64_t value = 0;
  for (char c : text) {
    if (c < '0' || c > '9') {
      return Status::Error(EINVAL, what + " must be a non-negative integer, not '" + text + "'");
    }
    const uint64_t digit = static_cast<uint64_t>(c - '0');
    if (value > (UINT64_MAX - digit) / 10) {
      return Status::Error(ERANGE, what + " is too large: " + text);
    }
    value = value * 10 + digit;
  }
  return value;
}

Result<std::optional<int>> ParseCompressOption(const ParsedArgs& args) {
  if (!args.Has("compress")) return std::optional<int>();
  std::optional<std::string> level = args.Last("compress");
  if (!level) return std::optional<int>(6);
  if (level->size() != 1 || (*level)[0] < '0' || (*level)[0] > '9') {
    return Status::Error(EINVAL, "--compress level must be 0..9, not '" + *level + "'");
  }
  return std::optional<int>((*level)[0] - '0');
}

void ApplyIndexOption(const ParsedArgs& args, const std::string& archive, ArchiveOptions& options) {
  const std::string given = args.Last("index").value_or("");
  options.index_enabled = given != "off";
  if (!options.index_enabled) return;
  if (!given.empty()) {
    options.index_dir = given;
    return;
  }
  // A directory that does not exist is not an error here: opening the archive says so.
  auto absolute = AbsoluteArchivePath(archive);
  if (!absolute.ok()) return;
  IndexPlace place = DefaultIndexPlace(
      *absolute, [](const std::string& line) { PrintMessage("warning: " + line); });
  options.index_dir = std::move(place.dir);
  options.index_fallback_dir = std::move(place.fallback);
}

}  // namespace npzfs::tool
