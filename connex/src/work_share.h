#pragma once
// share_work(): a parallel loop for the fused kernel that stays fast when
// other processes hold cores. at::parallel_for (OpenMP) gives each thread a
// fixed share and ends with a barrier, so a region lasts until its slowest
// thread has run: when another process holds a worker's core, every region
// waits for the scheduler to hand that core back (a kernel with a region per
// level then ran 10-60x slower on two threads than on one, BENCHMARKS.md).
// Here the range goes out in small chunks that whichever thread is running
// claims, and the caller, which works too, waits only for chunks already
// claimed: a worker that has not woken up costs nothing, one that lost its
// core costs at most the chunk it holds. Internal.
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>

namespace connex {

// Calls body(first, last) on disjoint subranges covering [begin, end), at
// least `grain` long (but the last), on up to share_work_threads() threads
// (the caller and pool workers). Serial when the range is at most one grain,
// one thread is asked for, the call is nested in another share_work(),
// another thread is using the pool, or the pool's ShareChooser found serial
// regions cheaper lately. The first exception a body throws is rethrown here
// once every claimed chunk has finished; chunks not yet claimed are then
// skipped.
void share_work(int64_t begin, int64_t end, int64_t grain, const std::function<void(int64_t, int64_t)>& body);

// The threads share_work() uses: set_share_work_threads(n) with n > 0, else
// (0, the start) torch's intra-op setting.
void set_share_work_threads(int threads);
int share_work_threads();

// How many pool workers exist (they start on first use, up to threads - 1).
int share_work_workers();
// Forgets what the pool's chooser measured, so it starts shared again (for tests).
void reset_share_chooser();

// Whether to share regions at all. A worker whose core another process
// holds can still claim a chunk and be preempted with it; the caller then
// waits a scheduler time slice (milliseconds) for work of microseconds, and
// the workers' wake-ups take the caller's core: with fewer free cores than
// threads, one thread is faster. Nothing says so in advance, so the pool
// measures: its regions go in windows, each window all shared or all
// serial (so that the workers stay awake through a shared one), and each
// kind of region (its size and grain: one level's pass, say) is timed per
// index in each way. A window's cost in a way is what its kinds, weighted by
// their indices in the last window, cost that way: like is compared with
// like however the windows fall across train steps. The cheaper way runs;
// every period windows one window tries the other, the period doubling (up
// to kMaxPeriod) while the choice is confirmed; a window half as dear again
// as the last of its way (the load changed) brings the try forward. A way
// that collapses (a worker preempted in every region) does not run out its
// window: once kEarliest timed regions of a window cost kEndEarly times what
// the same regions cost the other way when last timed, the window ends there
// and, in the chosen way, the other is tried at once; so a try of a
// collapsing way costs a few regions, not a window of them. Sharing
// wins ties within 5 %, as on an idle machine. The CLI uses one over its
// train steps, for OpenBLAS's threads (apps/core_share.h).
class ShareChooser {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr int64_t kWindow = 64;     // regions a window (a fused train step has about two a level)
  static constexpr int64_t kWarmUp = 2;      // a window's first regions, not timed (workers waking or idling)
  static constexpr int64_t kMaxPeriod = 64;  // windows at most between two tries of the other way
  static constexpr int64_t kEarliest = 8;    // timed regions before a window may end early
  static constexpr double kEndEarly = 4;     // ... when they took this many times their cost the other way

  bool shared() const { return shared_; }
  // One region's wall time and size, of kind `kind`, run the way shared() said.
  void record(Clock::duration took, int64_t indices, uint64_t kind = 0);
  // Regions until the next window that tries the other way (0: this one
  // does; a window that ends early brings it forward); a benchmark times
  // the settled choice between two tries.
  int64_t regions_until_try() const { return trying_ ? 0 : (left_ - 1) * kWindow + (kWindow - regions_); }

 private:
  struct Kind {
    double took[2] = {0, 0};      // this window's seconds, [serial, shared]
    int64_t indices[2] = {0, 0};  // and indices
    double cost[2] = {0, 0};      // seconds per index in the last window of each way (0: none yet)
    int64_t weight = 0;           // indices in the last window
  };
  double cost_of(bool shared) const;  // the last window's kinds at this way's costs; 0: unknown
  void decide();

  bool shared_ = true, chosen_ = true, trying_ = false;
  int64_t regions_ = 0, left_ = 1, period_ = 1;
  double last_[2] = {0, 0};  // seconds per index of the last window of each way, all kinds together
  double took_ = 0;
  int64_t indices_ = 0;
  double other_ = 0;         // what this window's timed regions cost the other way when last timed
  bool other_known_ = true;  // every timed region's kind was timed the other way
  std::map<uint64_t, Kind> kinds_;
};

}  // namespace connex
