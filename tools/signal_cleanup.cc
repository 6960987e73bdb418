#include "tools/signal_cleanup.h"

#include <sys/stat.h>
#include <unistd.h>

#include <climits>
#include <csignal>
#include <cstring>

#include "npzfs/archive_writer.h"
#include "tools/npz_cli.h"

namespace npzfs::tool {
namespace {

constexpr int kSignals[] = {SIGINT, SIGTERM, SIGHUP};

// Everything the handler needs, made before it can run: it may only write bytes and exec.
char g_signo[4];
char g_path[PATH_MAX + 1];
char g_temp[PATH_MAX + 1];
char g_no_temp[] = "";
char g_name[] = "npz";
char g_mode[sizeof kAfterSignal];
char* g_argv[] = {g_name, g_mode, g_signo, g_path, nullptr, nullptr};
struct sigaction g_previous[sizeof kSignals / sizeof kSignals[0]];

// The cleanup waits for the archive's locks. If another npz holds them (a writer this one
// was waiting behind), it is given kCleanupWait, then left to that writer, which undoes or
// removes what is left before its own work (the message says so).
constexpr unsigned kCleanupWait = 5;
int g_cleanup_signal = SIGINT;

extern "C" void GiveUpCleanup(int) {
  static const char kMessage[] =
      "npz: gave up the cleanup after 5 s (see above): what is left is undone by the writer "
      "it waited for if that is npz, or by the next npz command on the file\n";
  [[maybe_unused]] ssize_t n = ::write(STDERR_FILENO, kMessage, sizeof kMessage - 1);
  ::signal(g_cleanup_signal, SIG_DFL);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, g_cleanup_signal);
  ::sigprocmask(SIG_UNBLOCK, &set, nullptr);
  ::raise(g_cleanup_signal);
  ::_exit(128 + g_cleanup_signal);
}

extern "C" void ExecCleanup(int sig) {
  g_signo[0] = static_cast<char>('0' + sig / 10);
  g_signo[1] = static_cast<char>('0' + sig % 10);
  g_signo[2] = '\0';
  ::execv("/proc/self/exe", g_argv);
  ::signal(sig, SIG_DFL);
  ::raise(sig);
}

}  // namespace

CleanupOnSignal::CleanupOnSignal(const std::string& path, Scope scope) {
  std::memcpy(g_mode, kAfterSignal, sizeof kAfterSignal);
  std::strncpy(g_path, path.c_str(), PATH_MAX);
  g_path[PATH_MAX] = '\0';
  g_temp[0] = '\0';  // "": no temp file yet, nothing to remove
  g_argv[4] = scope == Scope::kOwnTempFileOnly ? g_temp : nullptr;
  struct sigaction sa {};
  sa.sa_handler = ExecCleanup;
  sigemptyset(&sa.sa_mask);
  for (int s : kSignals) sigaddset(&sa.sa_mask, s);  // one handler run at most
  for (size_t i = 0; i < std::size(kSignals); ++i) {
    sigaction(kSignals[i], nullptr, &g_previous[i]);
    // A signal ignored since startup stays ignored: nohup, or a background job of a script.
    if (g_previous[i].sa_handler != SIG_IGN) sigaction(kSignals[i], &sa, nullptr);
  }
}

CleanupOnSignal::~CleanupOnSignal() {
  for (size_t i = 0; i < std::size(kSignals); ++i) sigaction(kSignals[i], &g_previous[i], nullptr);
  g_argv[4] = nullptr;
}

void CleanupOnSignal::OwnTempFile(const std::string& temp_path) {
  g_argv[4] = g_no_temp;  // a handler running meanwhile sees no half-copied name
  std::strncpy(g_temp, temp_path.c_str(), PATH_MAX);
  g_temp[PATH_MAX] = '\0';
  g_argv[4] = g_temp;
}

SignalsDeferred::SignalsDeferred() {
  sigset_t set;
  sigemptyset(&set);
  for (int s : kSignals) sigaddset(&set, s);
  pthread_sigmask(SIG_BLOCK, &set, &previous_);
}

SignalsDeferred::~SignalsDeferred() { pthread_sigmask(SIG_SETMASK, &previous_, nullptr); }

int RunAfterSignal(const std::vector<std::string>& args) {
  int sig = SIGINT;
  if (args.size() == 2 || args.size() == 3) sig = std::atoi(args[0].c_str());
  if ((args.size() != 2 && args.size() != 3) || sig <= 0 || sig >= NSIG) {
    PrintMessage(std::string(kAfterSignal) + " is for npz itself");
    return kExitUsage;
  }
  const std::string& path = args[1];
  const char* name = sigabbrev_np(sig);
  PrintMessage(std::string("interrupted by SIG") + (name != nullptr ? name : "?") +
               ": cleaning up " + path);
  g_cleanup_signal = sig;
  ::signal(SIGALRM, GiveUpCleanup);
  ::alarm(kCleanupWait);
  bool undone = false;
  struct stat st;
  if (args.size() == 3) {
    // The writer's own temp file: other writers of PATH may be at work beside it.
    undone = !args[2].empty() && ::unlink(args[2].c_str()) == 0;
    if (undone) PrintMessage(path + ": removed the unfinished " + args[2]);
  } else if (::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
    auto recovered = RecoverInterruptedAppend(path, PrintMessage);
    if (!recovered.ok()) PrintMessage(recovered.status().message());
    undone = recovered.ok() && *recovered;
  }
  if (args.size() == 2) {
    auto removed = RemoveStaleTempFiles(path, PrintMessage);
    if (!removed.ok() && removed.status().code() != ENOENT) {
      PrintMessage(removed.status().message());
    }
    if (removed.ok() && *removed > 0) undone = true;
  }
  ::alarm(0);
  if (!undone) {
    // The signal came before the write began, or after it was complete.
    PrintMessage(path +
                 ": nothing to undo: it is as the command found it, or as it made it "
                 "(npz ls shows which)");
  }
  // The handler's mask came through the exec: the signals stayed blocked during the cleanup
  // (a second Ctrl-C waits for it). Now the first one ends the process.
  ::signal(sig, SIG_DFL);
  ::raise(sig);
  sigset_t set;
  sigemptyset(&set);
  for (int s : kSignals) sigaddset(&set, s);
  ::sigprocmask(SIG_UNBLOCK, &set, nullptr);
  return 128 + sig;
}

}  // namespace npzfs::tool
