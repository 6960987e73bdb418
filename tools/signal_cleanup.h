// Ctrl-C during a write: npz add, pack and frames -o stopped by SIGINT, SIGTERM or SIGHUP.
//
// Killed in the middle, an in-place append leaves the archive unreadable to numpy and unzip
// until the next npz command undoes it from its journal, and a copy leaves its temp file.
// Both are what a crash leaves, and recovery is the same; it should simply run at once.
//
// While a CleanupOnSignal is alive, such a signal makes the process exec itself as
// "npz --after-signal SIGNO PATH". execve is async-signal-safe and ends every thread at
// once: the writer stops where it is, and its file descriptors (all O_CLOEXEC) close,
// releasing their flocks. The new image (RunAfterSignal) undoes an interrupted append of
// PATH from its journal and removes its stale temp files, as any later npz command would,
// says so, and then dies of the same signal, so that the shell sees what it sent. The exec
// keeps the handler's signal mask: a second signal waits until the cleanup is done. If the
// exec fails, the signal kills the process as it would have without the guard. A signal
// ignored at startup (nohup, a background job of a script) stays ignored. The cleanup waits
// at most 5 s for the archive's locks: a writer this one queued behind keeps them, and
// undoes or removes what is left before its own work. A writer that takes no lock (frames
// -o: several may write one OUT at once) is guarded with kOwnTempFileOnly: it names its temp
// file (OwnTempFile) once made, and only that file is removed, never another writer's.
//
// Not thread-safe: one guard at a time, made and destroyed on the main thread.
#pragma once

#include <csignal>
#include <string>
#include <vector>

namespace npzfs::tool {

class CleanupOnSignal {
 public:
  enum class Scope {
    kArchive,          // add, pack: undo PATH's interrupted append, remove its temp files
    kOwnTempFileOnly,  // frames -o: remove the temp file named by OwnTempFile, if any
  };
  // `path`: the archive or output file being written.
  explicit CleanupOnSignal(const std::string& path, Scope scope = Scope::kArchive);
  ~CleanupOnSignal();
  // The temp file this process writes PATH through: the cleanup removes it and nothing else.
  // Create the file and name it here inside a SignalsDeferred, so that no signal falls
  // between the two (the file would be left behind).
  void OwnTempFile(const std::string& temp_path);
  CleanupOnSignal(const CleanupOnSignal&) = delete;
  CleanupOnSignal& operator=(const CleanupOnSignal&) = delete;
};

// While alive, the signals CleanupOnSignal handles wait (blocked in this thread), and come
// when it is destroyed: for a step and its bookkeeping to happen together.
class SignalsDeferred {
 public:
  SignalsDeferred();
  ~SignalsDeferred();
  SignalsDeferred(const SignalsDeferred&) = delete;
  SignalsDeferred& operator=(const SignalsDeferred&) = delete;

 private:
  sigset_t previous_;
};

// The hidden command line the signal execs: "--after-signal SIGNO PATH [TEMP]". Returns the
// exit code (128 + SIGNO) only if raising the signal did not end the process.
inline constexpr char kAfterSignal[] = "--after-signal";
int RunAfterSignal(const std::vector<std::string>& args);

}  // namespace npzfs::tool
