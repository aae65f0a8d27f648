#include "connex/openblas.h"

#include <dlfcn.h>
#include <sys/auxv.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdlib>
#include <cstring>

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

namespace {

bool same_name(const std::string& a, const std::string& b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](unsigned char x, unsigned char y) {
           return std::tolower(x) == std::tolower(y);
         });
}

}  // namespace

std::string faster_openblas_kernels(const std::string& running, const CpuVectors& cpu) {
  // OpenBLAS's x86-64 cores with AVX2 (or FMA3 and AVX, Excavator's) kernels,
  // those with AVX-512 among them: where it chose one, it knew the
  // processor, and its choice stands.
  static constexpr std::array<const char*, 6> kKnownCores{"Haswell",        "Zen",      "SkylakeX", "Cooperlake",
                                                          "SapphireRapids", "Excavator"};
  if (running.empty() ||
      std::any_of(kKnownCores.begin(), kKnownCores.end(), [&](const char* core) { return same_name(core, running); }))
    return "";
  if (cpu.avx512) return "SkylakeX";
  if (cpu.avx2_fma) return "Haswell";
  return "";
}

OpenBlasKernels openblas_kernels() {
  OpenBlasKernels k;
  using Text = char* (*)();
  if (auto name = reinterpret_cast<Text>(::dlsym(RTLD_DEFAULT, "openblas_get_corename"))) {
    if (const char* running = name()) k.running = running;
  }
  if (auto config = reinterpret_cast<Text>(::dlsym(RTLD_DEFAULT, "openblas_get_config"))) {
    const char* text = config();
    k.selectable = text && std::strstr(text, "DYNAMIC_ARCH") != nullptr;
  }
  if (k.selectable) k.faster = faster_openblas_kernels(k.running, cpu_vectors());
  if (const char* asked = std::getenv("OPENBLAS_CORETYPE")) {
    k.asked = asked;
    k.chosen_by_environment = k.selectable && same_name(k.asked, k.running);
  }
  return k;
}

std::string describe(const OpenBlasKernels& kernels) {
  if (kernels.running.empty()) return "";
  std::string notes;
  auto note = [&notes](const std::string& text) { notes += (notes.empty() ? "" : "; ") + text; };
  if (kernels.chosen_by_environment) {
    note("OPENBLAS_CORETYPE");
  } else if (!kernels.asked.empty()) {
    // The value as one line of printable ASCII, whatever the environment holds.
    std::string asked = kernels.asked.substr(0, 40);
    for (char& c : asked)
      if (c < 0x20 || c > 0x7e) c = '?';
    note("OPENBLAS_CORETYPE=" + asked + " not taken");
  }
  if (!kernels.faster.empty())
    note("this processor runs " + kernels.faster + "'s faster: set OPENBLAS_CORETYPE=" + kernels.faster);
  const std::string said = "OpenBLAS's " + kernels.running + " kernels";
  return notes.empty() ? said : said + " (" + notes + ")";
}

void restart_with_openblas_settings(char** argv, const std::vector<std::pair<std::string, std::string>>& extra) {
  const OpenBlasKernels kernels = openblas_kernels();
  if (kernels.running.empty()) return;  // another BLAS: none of these settings is read
  // Run through the dynamic loader by hand (ld.so PROGRAM): /proc/self/exe is the loader.
  if (::getauxval(AT_BASE) == 0) return;
  std::vector<std::string> set;
  auto add = [&set](const std::string& name, const std::string& value) {
    if (!std::getenv(name.c_str()) && ::setenv(name.c_str(), value.c_str(), 0) == 0) set.push_back(name);
  };
  if (!kernels.faster.empty()) add("OPENBLAS_CORETYPE", kernels.faster);  // unless set (and ignored)
  for (const auto& [name, value] : extra) add(name, value);
  if (set.empty()) return;
  ::execv("/proc/self/exe", argv);
  for (const std::string& name : set) ::unsetenv(name.c_str());
}

}  // namespace connex
