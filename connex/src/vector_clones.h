#pragma once
// CONNEX_VECTOR_CLONES: compile a function three times, for x86-64's SSE2
// baseline, AVX2 with FMA, and AVX-512 (GCC's target_clones); the loader
// picks the one the processor runs. For the kernels' loops over a batch,
// which vectorise 4, 8 or 16 floats wide. A clone compiles what is inlined
// into it for its target, so the loops go in always_inline helpers. Empty
// elsewhere (other compilers, other processors). Internal.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define CONNEX_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CONNEX_VECTOR_CLONES
#endif
