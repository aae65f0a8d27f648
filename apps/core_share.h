#pragma once
// How a process shares its cores. There are up to three thread pools:
// torch's intra-op pool (OpenMP), OpenBLAS's own (Debian's pthreads build)
// and the fused kernel's (fused_kernel.h). Two pools busy in turn fight over
// the cores (BENCHMARKS.md: a dense MLP ran 33 steps/s with torch and
// OpenBLAS both at 2 threads, 103 with torch at 1), so one pool gets the
// cores and the others one thread, by where the network spends its time:
// the fused kernel in its own pool, the per-level path in matrix products.
// torch's pool never gets them for a fused network: its parallel regions
// end waiting for every thread, which on a machine where other processes
// hold cores slowed training several times over (BENCHMARKS.md, workload
// 11), while the kernel's pool runs serially when sharing does not pay.
// Other BLAS libraries share torch's pool or follow its setting (MKL,
// OpenBLAS's OpenMP build); then torch gets the cores a per-level network
// would give the BLAS.
//
// Used by the `connex` CLI and by connex_bench, so that the benchmark
// measures what the CLI runs.
#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>

#include <fmt/format.h>
#include <torch/torch.h>

#include "connex/fused_kernel.h"
#include "connex/neural_network.h"
#include "work_share.h"

namespace connex::apps {

// The cores of this machine (at least 1: the standard allows 0 for unknown).
inline int cores_here() { return static_cast<int>(std::max(1u, std::thread::hardware_concurrency())); }

// The most a --threads flag (the CLI's, the benchmark's) may ask for: the
// pools start a thread each per --threads, and threads beyond 4 per core are
// slow to start and only wait for each other.
inline int most_threads_here() { return 4 * cores_here(); }

struct CoreShare {
  int threads = 1;  // the cores this process may use
  // For a per-level network: whether OpenBLAS gets `threads` or 1. Its
  // pool, too, ends each product waiting for every thread, and collapsed
  // where other processes held cores (BENCHMARKS.md, workload 11); so the
  // train steps are measured, as the kernel's pool measures its levels.
  // Shared by copies.
  std::shared_ptr<ShareChooser> blas_choice = std::make_shared<ShareChooser>();

  // OpenBLAS with a pthreads pool of its own (openblas_get_parallel() == 1).
  // Looked up once: after_step() asks on every train step.
  static bool blas_has_own_pool() {
    static const bool own = [] {
      using GetParallel = int (*)();
      auto get = reinterpret_cast<GetParallel>(::dlsym(RTLD_DEFAULT, "openblas_get_parallel"));
      return get && get() == 1;
    }();
    return own;
  }
  // A positive OPENBLAS_NUM_THREADS the user set caps what connex gives
  // OpenBLAS (it would otherwise override the variable unseen); 0: none.
  static int blas_limit() {
    const char* text = std::getenv("OPENBLAS_NUM_THREADS");
    if (!text) return 0;
    char* end = nullptr;
    const long n = std::strtol(text, &end, 10);
    return end != text && *end == '\0' && n > 0 && n < 1024 ? static_cast<int>(n) : 0;
  }
  static void set_blas_threads(int n) {
    using SetThreads = void (*)(int);
    if (const int limit = blas_limit()) n = std::min(n, limit);
    if (auto set = reinterpret_cast<SetThreads>(::dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) set(n);
  }
  // 0 where the BLAS is not OpenBLAS.
  static int blas_threads() {
    using GetThreads = int (*)();
    auto get = reinterpret_cast<GetThreads>(::dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
    return get ? get() : 0;
  }
  // Before a network exists (and for commands that only read or edit one): torch's pool.
  void apply_default() const {
    torch::set_num_threads(threads);
    if (blas_has_own_pool()) set_blas_threads(1);
    set_fused_kernel_threads(threads);
  }
  // Gives the cores to the pool `net` uses; returns the choice, for the log.
  std::string apply(const NeuralNetwork& net) const {
    const bool fused = net->uses_fused_kernel();
    const std::string path = net->uses_dense_path() ? "dense path" : "per-level path";  // both run on the BLAS
    set_fused_kernel_threads(fused ? threads : 1);
    if (!blas_has_own_pool()) {
      torch::set_num_threads(fused ? 1 : threads);
      return fmt::format("{} torch thread(s); the BLAS shares or follows torch's pool ({})", fused ? 1 : threads,
                         fused ? fmt::format("fused kernel on {} thread(s)", fused_kernel_threads()) : path);
    }
    torch::set_num_threads(1);
    set_blas_threads(fused ? 1 : blas_choice->shared() ? threads : 1);
    const int blas = fused ? 1 : blas_limit() ? std::min(threads, blas_limit()) : threads;
    return fmt::format("1 torch thread(s), {} BLAS thread(s) ({})", blas,
                       fused      ? fmt::format("fused kernel on {} thread(s)", fused_kernel_threads())
                       : blas > 1 ? path + "; 1 while sharing them does not pay"
                                  : path);
  }
  // After a train step of `net` (`took`, `rows` samples): a per-level
  // network's BLAS threads for the next step, as its measurements say.
  void after_step(const NeuralNetwork& net, std::chrono::steady_clock::duration took, int64_t rows) const {
    if (threads <= 1 || net->uses_fused_kernel() || !blas_has_own_pool()) return;
    const bool shared = blas_choice->shared();
    blas_choice->record(took, rows);
    if (blas_choice->shared() != shared) set_blas_threads(blas_choice->shared() ? threads : 1);
  }
};

}  // namespace connex::apps
