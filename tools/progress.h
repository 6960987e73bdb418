// A one-line progress bar for long work in the `npz` tool: bytes done, rate and ETA.
//
// It draws on stderr only when stderr is a terminal, and only once the work has taken longer
// than one second, so quick commands and scripted runs (stderr a pipe or a file) stay silent.
// NPZ_PROGRESS=always forces drawing and NPZ_PROGRESS=never suppresses it (for tests and for
// users who want quiet terminals); NPZ_PROGRESS_DELAY_MS overrides the one-second delay.
//
// A ProgressBar owns nothing but its line on the terminal: destroying it without Finish()
// (an error path) erases the line so the error message that follows starts clean.
// Thread-safe: Update() may be called from any thread (core progress callbacks).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>

namespace npzfs::tool {

class ProgressBar {
 public:
  // `label` says what is being done ("pack out.npz"); `total` is in bytes, 0 if unknown.
  ProgressBar(std::string label, uint64_t total);
  ~ProgressBar();
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  // Records progress; redraws at most ten times a second. `done` may not decrease.
  void Update(uint64_t done);
  // Records progress and total together, as the core's progress(done, total) callbacks give.
  void Update(uint64_t done, uint64_t total);
  // Draws the final state (if the bar was ever shown) and ends the line.
  void Finish();

  // An adapter for core APIs taking std::function<void(uint64_t done, uint64_t total)>.
  std::function<void(uint64_t, uint64_t)> Callback();
  // Like Callback(), for work that is one part of a larger job: reports base + done against
  // this bar's own total.
  std::function<void(uint64_t, uint64_t)> CallbackFrom(uint64_t base);

  // Whether this process would draw at all (terminal or NPZ_PROGRESS=always).
  static bool Enabled();

 private:
  void DrawLocked(bool final);

  using Clock = std::chrono::steady_clock;
  std::mutex mu_;
  const std::string label_;
  uint64_t total_;
  uint64_t done_ = 0;
  const bool enabled_;
  const Clock::time_point start_;
  Clock::duration delay_;
  Clock::time_point last_draw_{};
  bool shown_ = false;
  bool finished_ = false;
};

// "1.5 GiB", "320 B": binary units with one decimal, as the bar and `npz ls` print sizes.
std::string HumanBytes(uint64_t bytes);

}  // namespace npzfs::tool
