#pragma once
// CONNEX_VECTOR_CLONES: compile a function three times, for x86-64's SSE2
// baseline, AVX2 with FMA, and AVX-512 (GCC's target_clones); the loader
// picks the one the processor runs. For the kernels' loops over a batch,
// which vectorise 4, 8 or 16 floats wide. A clone compiles what is inlined
// into it for its target, so the loops go in always_inline helpers. Empty
// elsewhere (other compilers, other processors).
//
// CONNEX_TARGET_AVX2 and CONNEX_TARGET_AVX512 compile one function for one
// of those sets, for code that chooses itself (it must call such a function
// only where widest_vector_bytes() allows): the fused kernel, whose loops
// are written on vectors of each set's register width. Internal.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define CONNEX_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define CONNEX_TARGET_AVX2 __attribute__((target("arch=x86-64-v3")))
#define CONNEX_TARGET_AVX512 __attribute__((target("arch=x86-64-v4")))
#define CONNEX_TARGETS_X86 1
#else
#define CONNEX_VECTOR_CLONES
#define CONNEX_TARGET_AVX2
#define CONNEX_TARGET_AVX512
#define CONNEX_TARGETS_X86 0
#endif

namespace connex {

// The widest vector registers, in bytes, of the sets above that this
// processor runs: 64 (AVX-512), 32 (AVX2 with FMA) or 16 (the baseline).
// Without the targets (other compilers and processors), 64: the code is
// then one generic build, and any width runs.
inline int widest_vector_bytes() {
#if CONNEX_TARGETS_X86
  static const int bytes = __builtin_cpu_supports("x86-64-v4") ? 64 : __builtin_cpu_supports("x86-64-v3") ? 32 : 16;
  return bytes;
#else
  return 64;
#endif
}

}  // namespace connex
