#include "work_share.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <system_error>
#include <thread>

#include <pthread.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include <ATen/Parallel.h>

namespace connex {

namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#endif
}

// Set on pool workers, and on a caller while its region runs: a nested call runs serially.
thread_local bool in_region = false;

// How long an idle worker polls for the next region before it sleeps (and
// a caller for its workers' last chunks). A
// fused train step's regions (a level each) follow each other within tens
// of microseconds, and a sleeping worker takes about as long to wake, so a
// worker that slept between levels would join each one late. Polling costs
// a core only while regions are shared: when the chooser runs them serially
// no region wakes the workers and they sleep.
constexpr auto kPoll = std::chrono::microseconds(100);

// One region: the range in chunks, claimed by counter.
struct Job {
  const std::function<void(int64_t, int64_t)>* body = nullptr;
  int64_t begin = 0, end = 0, chunk = 1, chunks = 0;
  int helpers = 0;  // workers with a smaller index may join
  std::atomic<int64_t> next{0}, done{0};
  std::atomic<bool> failed{false};
  std::mutex error_mutex;
  std::exception_ptr error;

  // Claims and runs chunks until none is left unclaimed.
  void work() {
    for (;;) {
      const int64_t k = next.fetch_add(1);
      if (k >= chunks) return;
      if (!failed.load(std::memory_order_relaxed)) {
        const int64_t first = begin + k * chunk;
        try {
          (*body)(first, std::min(end, first + chunk));
        } catch (...) {
          std::lock_guard<std::mutex> lock(error_mutex);
          if (!error) error = std::current_exception();
          failed = true;
        }
      }
      if (done.fetch_add(1) + 1 == chunks) finish();
    }
  }

  // The caller's wait for the chunks that were claimed: polling for as long
  // as a worker takes to wake (a chunk usually ends sooner), then asleep, so
  // that on a machine with fewer free cores than threads it gives its core
  // to the worker it waits for.
  void wait_done() {
    const auto since = std::chrono::steady_clock::now();
    for (int polls = 1; done.load() != chunks; ++polls) {
      cpu_relax();
      if (polls % 64 == 0 && std::chrono::steady_clock::now() - since > kPoll) break;
    }
    std::unique_lock<std::mutex> lock(done_mutex);
    done_signal.wait(lock, [&] { return done.load() == chunks; });
  }

 private:
  void finish() {
    std::lock_guard<std::mutex> lock(done_mutex);
    done_signal.notify_all();
  }
  std::mutex done_mutex;
  std::condition_variable done_signal;
};

// The workers and the region they may join. The atomics are sequentially
// consistent where a pair of threads each writes one and reads the other
// (posting a job against a worker going to sleep; retiring it against a
// worker looking at it).
class Pool {
 public:
  static Pool& get();

  // Runs the job, shared with the workers or alone as the chooser says;
  // false (nothing ran) while another thread's job holds the pool.
  bool try_run(Job& job) {
    std::unique_lock<std::mutex> lock(run_mutex_, std::try_to_lock);
    if (!lock.owns_lock()) return false;
    const auto start = ShareChooser::Clock::now();
    if (chooser_.shared() && grow(job.helpers)) {
      helpers_.store(job.helpers);
      job_.store(&job);
      generation_.fetch_add(1);
      if (sleeping_.load() > 0) {
        std::lock_guard<std::mutex> sleep_lock(sleep_mutex_);
        wake_.notify_all();
      }
      job.work();
      job.wait_done();  // only claimed chunks: a worker that wakes later finds none
      job_.store(nullptr);
      while (inside_.load() != 0) std::this_thread::yield();  // a worker still reading the job
    } else {
      job.work();
    }
    chooser_.record(ShareChooser::Clock::now() - start, job.end - job.begin,
                    static_cast<uint64_t>(job.end - job.begin) * 1000003u + static_cast<uint64_t>(job.chunk));
    return true;
  }

  int workers() const { return workers_.load(); }
  void reset_chooser() {
    std::lock_guard<std::mutex> lock(run_mutex_);
    chooser_ = ShareChooser();
  }

 private:
  // Starts workers up to `count`; false when the system refuses a thread
  // (the job then runs serially).
  bool grow(int count) {
    try {
      while (workers_.load() < count) {
        const int index = workers_.load();
        std::thread([this, index] { loop(index); }).detach();
        workers_.store(index + 1);
      }
    } catch (const std::system_error&) {
      return false;
    }
    return true;
  }

  void loop(int index) {
    in_region = true;
    uint64_t seen = 0;  // so that a worker started for a job joins that job
    for (;;) {
      const auto idle_since = ShareChooser::Clock::now();
      for (int polls = 1; generation_.load() == seen; ++polls) {
        cpu_relax();
        if (polls % 64 != 0 || ShareChooser::Clock::now() - idle_since < kPoll) continue;
        std::unique_lock<std::mutex> sleep_lock(sleep_mutex_);
        sleeping_.fetch_add(1);
        wake_.wait(sleep_lock, [&] { return generation_.load() != seen; });
        sleeping_.fetch_sub(1);
      }
      seen = generation_.load();
      // A worker the job does not want (torch's thread count went down)
      // stays out of it, so the caller never waits on it.
      if (index >= helpers_.load()) continue;
      inside_.fetch_add(1);
      if (Job* job = job_.load(); job && index < job->helpers) job->work();
      inside_.fetch_sub(1);
    }
  }

  ShareChooser chooser_;  // under run_mutex_
  std::mutex run_mutex_;  // one job at a time
  std::mutex sleep_mutex_;
  std::condition_variable wake_;
  std::atomic<uint64_t> generation_{0};  // bumped for every job
  std::atomic<Job*> job_{nullptr};
  std::atomic<int> inside_{0};    // workers looking at job_
  std::atomic<int> sleeping_{0};  // workers waiting on wake_
  std::atomic<int> workers_{0};
  std::atomic<int> helpers_{0};  // the current job's helpers: a hint to the others
};

// Never destroyed: detached workers may be waiting on it at exit. A forked
// child has none of the parent's threads, so it starts a pool of its own.
std::atomic<Pool*> the_pool{nullptr};

Pool& Pool::get() {
  static const bool once = [] {
    the_pool.store(new Pool);
    pthread_atfork(nullptr, nullptr, [] { the_pool.store(new Pool); });
    return true;
  }();
  (void)once;
  return *the_pool.load();
}

}  // namespace

void ShareChooser::record(Clock::duration took, int64_t indices, uint64_t kind) {
  if (regions_++ >= kWarmUp) {
    const double seconds = std::chrono::duration<double>(took).count();
    Kind& k = kinds_[kind];
    k.took[shared_] += seconds;
    k.indices[shared_] += indices;
    took_ += seconds;
    indices_ += indices;
    if (k.cost[!shared_] > 0)
      other_ += k.cost[!shared_] * static_cast<double>(indices);
    else
      other_known_ = false;
  }
  const bool dear = regions_ >= kWarmUp + kEarliest && other_known_ && other_ > 0 && took_ > kEndEarly * other_;
  if (regions_ < kWindow && !dear) return;
  decide();
}

double ShareChooser::cost_of(bool shared) const {
  double total = 0;
  for (const auto& [key, k] : kinds_) {
    if (k.weight == 0) continue;
    if (k.cost[shared] == 0) return 0;  // a kind not yet timed this way
    total += k.cost[shared] * static_cast<double>(k.weight);
  }
  return total;
}

void ShareChooser::decide() {
  // The window's kinds: their cost this way and their weight; kinds absent
  // from it weigh nothing, and too many kinds are forgotten.
  if (kinds_.size() > 4096) kinds_.clear();
  for (auto& [key, k] : kinds_) {
    k.weight = k.indices[shared_];
    if (k.weight > 0) k.cost[shared_] = k.took[shared_] / static_cast<double>(k.weight);
    k.took[shared_] = 0;
    k.indices[shared_] = 0;
  }
  const double before = last_[shared_];
  last_[shared_] = took_ / static_cast<double>(std::max<int64_t>(1, indices_));
  const bool ended_early = regions_ < kWindow;  // record(): kEndEarly times the other way's cost
  regions_ = indices_ = 0;
  took_ = other_ = 0;
  other_known_ = true;
  // The way in use got half as dear again (the load changed), or collapsed: try the other now.
  if (!trying_ && ((before > 0 && last_[shared_] > before * 1.5) || ended_early)) left_ = 1, period_ = 1;
  if (trying_) {
    trying_ = false;
    const double serial = cost_of(false), shared = cost_of(true);
    const bool best = serial == 0 || shared == 0 || shared <= serial * 1.05;
    period_ = best == chosen_ ? std::min(period_ * 2, kMaxPeriod) : 1;
    chosen_ = shared_ = best;
    left_ = period_;
  } else if (--left_ <= 0) {
    trying_ = true;
    shared_ = !chosen_;
  }
}

void share_work(int64_t begin, int64_t end, int64_t grain, const std::function<void(int64_t, int64_t)>& body) {
  const int64_t n = end - begin;
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int threads = in_region ? 1 : share_work_threads();
  if (threads <= 1 || n <= grain) return body(begin, end);
  Job job;
  job.body = &body;
  job.begin = begin;
  job.end = end;
  // About four chunks a thread: a thread that loses its core holds little.
  job.chunk = std::max(grain, (n + 4 * threads - 1) / (4 * threads));
  job.chunks = (n + job.chunk - 1) / job.chunk;
  job.helpers = threads - 1;
  struct InRegion {  // also when starting a worker throws
    InRegion() { in_region = true; }
    ~InRegion() { in_region = false; }
  };
  bool ran;
  {
    InRegion region;
    ran = Pool::get().try_run(job);
  }
  if (!ran) return body(begin, end);
  if (job.error) std::rethrow_exception(job.error);
}

int share_work_workers() { return Pool::get().workers(); }

void reset_share_chooser() { Pool::get().reset_chooser(); }

namespace {
std::atomic<int> configured_threads{0};  // 0: torch's intra-op setting
}  // namespace

void set_share_work_threads(int threads) { configured_threads.store(std::max(0, threads)); }

int share_work_threads() {
  const int configured = configured_threads.load();
  return std::max(1, configured > 0 ? configured : at::get_num_threads());
}

}  // namespace connex
