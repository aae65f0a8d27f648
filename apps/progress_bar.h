#pragma once
// A one-line terminal progress bar (epoch, loss, speed, ETA). When stdout is
// not a terminal it prints nothing; callers log plain lines instead.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>

namespace connex::apps {

class ProgressBar {
 public:
  explicit ProgressBar(int total, std::string label = "train")
      : total_(total),
        label_(std::move(label)),
        tty_(isatty(fileno(stdout)) != 0),
        start_(std::chrono::steady_clock::now()) {}

  bool is_tty() const { return tty_; }

  void update(int done, double loss, const std::string& extra = "") {
    if (!tty_) return;
    const auto now = std::chrono::steady_clock::now();
    if (done < total_ && now - last_draw_ < std::chrono::milliseconds(50)) return;
    last_draw_ = now;
    const double elapsed = std::chrono::duration<double>(now - start_).count();
    const double rate = done > 0 ? done / elapsed : 0.0;
    const double eta = rate > 0 ? (total_ - done) / rate : 0.0;
    const int width = 30, filled = total_ ? width * done / total_ : width;
    std::string bar(filled, '#');
    bar.resize(width, '.');
    std::printf("\r%s [%s] %d/%d loss %.6f %s  %.0f it/s  ETA %.1fs ", label_.c_str(), bar.c_str(), done, total_, loss,
                extra.c_str(), rate, eta);
    if (done >= total_) std::printf("\n");
    std::fflush(stdout);
  }

 private:
  int total_;
  std::string label_;
  bool tty_;
  std::chrono::steady_clock::time_point start_, last_draw_{};
};

}  // namespace connex::apps
