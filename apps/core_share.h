#pragma once
// How a process shares its cores. With Debian's OpenBLAS (pthreads build)
// there are two thread pools: torch's intra-op pool (OpenMP) and OpenBLAS's
// own, each one thread per core by default, and OpenMP's workers spin after
// every parallel region: when a training step uses both pools in turn they
// fight over the cores (BENCHMARKS.md: a dense MLP ran 33 steps/s with both
// at 2 threads, 103 with torch at 1 and OpenBLAS at 2). So one pool gets the
// cores and the other one thread, by where the network spends its time: the
// fused kernel works in torch's pool, per-level path in matrix products.
// Other BLAS libraries share torch's pool or follow its setting (MKL,
// OpenBLAS's OpenMP build); then torch simply gets the cores.
//
// Used by the `connex` CLI and by connex_bench, so that the benchmark
// measures what the CLI runs.
#include <dlfcn.h>

#include <string>

#include <fmt/format.h>
#include <torch/torch.h>

#include "connex/fused_kernel.h"
#include "connex/neural_network.h"

namespace connex::apps {

struct CoreShare {
  int threads = 1;  // the cores this process may use

  // OpenBLAS with a pthreads pool of its own (openblas_get_parallel() == 1).
  static bool blas_has_own_pool() {
    using GetParallel = int (*)();
    auto get = reinterpret_cast<GetParallel>(::dlsym(RTLD_DEFAULT, "openblas_get_parallel"));
    return get && get() == 1;
  }
  static void set_blas_threads(int n) {
    using SetThreads = void (*)(int);
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
  }
  // Gives the cores to the pool `net` uses; returns the choice, for the log.
  std::string apply(const NeuralNetwork& net) const {
    if (!blas_has_own_pool()) {
      torch::set_num_threads(threads);
      return fmt::format("{} torch thread(s); the BLAS shares or follows torch's pool", threads);
    }
    const bool fused = net->uses_fused_kernel();
    torch::set_num_threads(fused ? threads : 1);
    set_blas_threads(fused ? 1 : threads);
    // The threads the fused kernel reaches, measured: fewer than torch's in a
    // build without OpenMP, where ATen's parallel loops run serially.
    return fmt::format("{} torch thread(s), {} BLAS thread(s) ({})", fused ? threads : 1, blas_threads(),
                       fused ? fmt::format("fused kernel on {} thread(s)", fused_kernel_threads()) : "per-level path");
  }
};

}  // namespace connex::apps
