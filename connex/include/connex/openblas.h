#pragma once
// OpenBLAS reads some settings only when it loads, before main() runs:
// which kernels to run (OPENBLAS_CORETYPE) and how long its idle workers
// spin (OPENBLAS_THREAD_TIMEOUT). A build for several processors
// (DYNAMIC_ARCH, as Debian's) picks kernels for those it knows; a release
// older than the processor falls back on old ones. Debian
// bookworm's 0.3.21 on an Intel Xeon of 2023 (family 6, model 207, with
// AVX-512) ran its SSE3 "Prescott" kernels, and every matrix product (torch's
// Linear, the dense path, the attentions, a HAM) took 2-3 times as long as
// with its AVX-512 "SkylakeX" kernels on the same machine (BENCHMARKS.md).
// A program cannot switch them once loaded, so it starts itself again with
// the setting in its environment: the `connex` CLI (train, prune, predict),
// connex_bench and ham_digits do, and a program of your own can.
#include <string>
#include <utility>
#include <vector>

namespace connex {

// The vector instructions a processor offers (and its OS saves).
struct CpuVectors {
  bool avx2_fma = false;  // AVX2 and FMA: OpenBLAS's Haswell kernels
  bool avx512 = false;    // AVX-512 F, BW, CD, DQ and VL: its SkylakeX kernels
};
// This processor's.
CpuVectors cpu_vectors();

// The OPENBLAS_CORETYPE whose kernels run faster on `cpu` than `running`
// (an OpenBLAS core name, as openblas_get_corename() gives it, in any case):
// "SkylakeX" where `cpu` has AVX-512, else "Haswell" where it has AVX2 and
// FMA; empty where `running` is a core OpenBLAS chooses only for processors
// it knows to have AVX2 or FMA (Haswell, Zen, SkylakeX, Cooperlake,
// SapphireRapids, Excavator), is unknown (empty), or `cpu` has neither.
std::string faster_openblas_kernels(const std::string& running, const CpuVectors& cpu);

struct OpenBlasKernels {
  std::string running;                 // openblas_get_corename(); empty: the BLAS is not OpenBLAS
  bool selectable = false;             // a DYNAMIC_ARCH build, which reads OPENBLAS_CORETYPE (others run one set)
  std::string faster;                  // where selectable: faster_openblas_kernels(running, cpu_vectors())
  bool chosen_by_environment = false;  // OPENBLAS_CORETYPE named the kernels that run
  std::string asked;                   // OPENBLAS_CORETYPE's value, where set (OpenBLAS ignores a name it lacks)
};
// This process's.
OpenBlasKernels openblas_kernels();
// One phrase for a log: "OpenBLAS's SkylakeX kernels (OPENBLAS_CORETYPE)",
// "OpenBLAS's Prescott kernels (this processor runs SkylakeX's faster: set
// OPENBLAS_CORETYPE=SkylakeX)", "OpenBLAS's Cooperlake kernels
// (OPENBLAS_CORETYPE=Skylake not taken)" (a name OpenBLAS lacks: it chose
// itself); "" where the BLAS is not OpenBLAS.
std::string describe(const OpenBlasKernels& kernels);

// Starts this program again (execv of /proc/self/exe with `argv`) where
// OpenBLAS is the BLAS and the environment lacks a setting it should have:
// OPENBLAS_CORETYPE where openblas_kernels() names faster kernels, and each
// of `extra` (name, value) that is not set. Call it first in main(), before
// any work and before reading stdin. It returns where nothing was missing,
// where the program was started through the dynamic loader by hand, or
// where the restart failed (the entries it set are then removed again, and
// the process runs on as it is); the restarted program finds them set and
// returns. Child processes inherit the settings.
void restart_with_openblas_settings(char** argv, const std::vector<std::pair<std::string, std::string>>& extra = {});

}  // namespace connex
