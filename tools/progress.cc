#include "tools/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace npzfs::tool {
namespace {

constexpr int kBarWidth = 24;
constexpr auto kRedrawInterval = std::chrono::milliseconds(100);

std::chrono::milliseconds DelayFromEnv() {
  const char* env = std::getenv("NPZ_PROGRESS_DELAY_MS");
  if (env != nullptr && *env != '\0') return std::chrono::milliseconds(std::atoll(env));
  return std::chrono::milliseconds(1000);
}

std::string FormatDuration(double seconds) {
  if (seconds < 0 || seconds > 99 * 3600) return "--:--";
  auto s = static_cast<long>(seconds + 0.5);
  char buf[32];
  if (s >= 3600) {
    std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", s / 3600, (s / 60) % 60, s % 60);
  } else {
    std::snprintf(buf, sizeof buf, "%ld:%02ld", s / 60, s % 60);
  }
  return buf;
}

}  // namespace

std::string HumanBytes(uint64_t bytes) {
  static const char* const kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  if (bytes < 1024) return std::to_string(bytes) + " B";
  double v = static_cast<double>(bytes);
  int unit = 0;
  while (v >= 1024 && unit < 6) {
    v /= 1024;
    ++unit;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f %s", v, kUnits[unit]);
  return buf;
}

bool ProgressBar::Enabled() {
  const char* env = std::getenv("NPZ_PROGRESS");
  if (env != nullptr && std::strcmp(env, "always") == 0) return true;
  if (env != nullptr && std::strcmp(env, "never") == 0) return false;
  return isatty(STDERR_FILENO) == 1;
}

ProgressBar::ProgressBar(std::string label, uint64_t total)
    : label_(std::move(label)),
      total_(total),
      enabled_(Enabled()),
      start_(Clock::now()),
      delay_(DelayFromEnv()) {}

ProgressBar::~ProgressBar() {
  std::lock_guard<std::mutex> lock(mu_);
  if (shown_ && !finished_) {
    // Erase the unfinished bar: an error message usually follows.
    std::fputs("\r\033[K", stderr);
    std::fflush(stderr);
  }
}

void ProgressBar::Update(uint64_t done) {
  std::lock_guard<std::mutex> lock(mu_);
  if (done > done_) done_ = done;
  DrawLocked(false);
}

void ProgressBar::Update(uint64_t done, uint64_t total) {
  std::lock_guard<std::mutex> lock(mu_);
  if (total != 0) total_ = total;
  if (done > done_) done_ = done;
  DrawLocked(false);
}

void ProgressBar::Finish() {
  std::lock_guard<std::mutex> lock(mu_);
  if (finished_) return;
  if (shown_) {
    if (total_ != 0) done_ = total_;
    DrawLocked(true);
    std::fputc('\n', stderr);
    std::fflush(stderr);
  }
  finished_ = true;
}

std::function<void(uint64_t, uint64_t)> ProgressBar::Callback() {
  return [this](uint64_t done, uint64_t total) { Update(done, total); };
}

std::function<void(uint64_t, uint64_t)> ProgressBar::CallbackFrom(uint64_t base) {
  return [this, base](uint64_t done, uint64_t /*total*/) { Update(base + done); };
}

void ProgressBar::DrawLocked(bool final) {
  if (!enabled_ || finished_) return;
  const auto now = Clock::now();
  if (!final) {
    if (now - start_ < delay_) return;
    if (shown_ && now - last_draw_ < kRedrawInterval) return;
  }
  last_draw_ = now;
  shown_ = true;

  const double elapsed = std::chrono::duration<double>(now - start_).count();
  const double rate = elapsed > 0 ? static_cast<double>(done_) / elapsed : 0;
  std::string line = "\r" + label_ + " ";
  if (total_ != 0) {
    const double fraction = std::min(1.0, static_cast<double>(done_) / static_cast<double>(total_));
    const int filled = static_cast<int>(fraction * kBarWidth);
    line += "[" + std::string(filled, '#') + std::string(kBarWidth - filled, '.') + "] ";
    char pct[16];
    std::snprintf(pct, sizeof pct, "%3d%% ", static_cast<int>(fraction * 100));
    line += pct;
    line += HumanBytes(done_) + " / " + HumanBytes(total_);
  } else {
    line += HumanBytes(done_);
  }
  line += "  " + HumanBytes(static_cast<uint64_t>(rate)) + "/s";
  if (final) {
    line += "  " + FormatDuration(elapsed);
  } else if (total_ != 0 && rate > 0) {
    line += "  ETA " + FormatDuration(static_cast<double>(total_ - std::min(done_, total_)) / rate);
  }
  line += "\033[K";
  std::fputs(line.c_str(), stderr);
  std::fflush(stderr);
}

}  // namespace npzfs::tool
