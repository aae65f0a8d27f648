#include "connex/openblas.h"

#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdlib>

namespace connex {

CpuVectors cpu_vectors() {
  CpuVectors v;
#if defined(__x86_64__) && defined(__GNUC__)
  // GCC's checks also ask the OS (XGETBV) whether it saves the wider registers.
  __builtin_cpu_init();
  v.avx2_fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  v.avx512 = v.avx2_fma && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx512vl");
#endif
  return v;
}

std::string faster_openblas_kernels(const std::string& running, const CpuVectors& cpu) {
  // OpenBLAS's x86-64 cores with AVX2 kernels (those with AVX-512 among
  // them): where it chose one, it knew the processor, and its choice stands.
  static constexpr std::array<const char*, 5> kAvx2Cores{"Haswell", "Zen", "SkylakeX", "Cooperlake", "SapphireRapids"};
  if (running.empty() || std::find(kAvx2Cores.begin(), kAvx2Cores.end(), running) != kAvx2Cores.end()) return "";
  if (cpu.avx512) return "SkylakeX";
  if (cpu.avx2_fma) return "Haswell";
  return "";
}

OpenBlasKernels openblas_kernels() {
  OpenBlasKernels k;
  using CoreName = char* (*)();
  if (auto name = reinterpret_cast<CoreName>(::dlsym(RTLD_DEFAULT, "openblas_get_corename"))) {
    if (const char* running = name()) k.running = running;
  }
  k.faster = faster_openblas_kernels(k.running, cpu_vectors());
  k.chosen_by_environment = std::getenv("OPENBLAS_CORETYPE") != nullptr;
  return k;
}

std::string describe(const OpenBlasKernels& kernels) {
  if (kernels.running.empty()) return "";
  const std::string said = "OpenBLAS's " + kernels.running + " kernels";
  if (kernels.chosen_by_environment) return said + " (OPENBLAS_CORETYPE)";
  if (kernels.faster.empty()) return said;
  return said + " (this processor runs " + kernels.faster + "'s faster: set OPENBLAS_CORETYPE=" + kernels.faster + ")";
}

void restart_with_openblas_settings(char** argv, const std::vector<std::pair<std::string, std::string>>& extra) {
  const OpenBlasKernels kernels = openblas_kernels();
  if (kernels.running.empty()) return;  // another BLAS: none of these settings is read
  std::vector<std::string> set;
  auto add = [&set](const std::string& name, const std::string& value) {
    if (!std::getenv(name.c_str()) && ::setenv(name.c_str(), value.c_str(), 0) == 0) set.push_back(name);
  };
  if (!kernels.chosen_by_environment && !kernels.faster.empty()) add("OPENBLAS_CORETYPE", kernels.faster);
  for (const auto& [name, value] : extra) add(name, value);
  if (set.empty()) return;
  ::execv("/proc/self/exe", argv);
  for (const std::string& name : set) ::unsetenv(name.c_str());
}

}  // namespace connex
