#pragma once
// Draws on mt19937_64's specified output, the same with every standard
// library (the standard distributions differ between them): a seeded graph
// or rewiring comes out the same everywhere. Internal.
#include <cstdint>
#include <random>

namespace connex {

// Uniform in [0, bound), bound >= 1, unbiased: Lemire's multiply-and-reject,
// which divides only in the rare case that a draw may need rejecting (a
// modulo divided twice per draw, most of a rewiring's random growth).
inline uint64_t uniform_below(std::mt19937_64& random, uint64_t bound) {
  auto product = static_cast<unsigned __int128>(random()) * bound;
  if (static_cast<uint64_t>(product) < bound) {
    const uint64_t threshold = (0 - bound) % bound;  // 2^64 mod bound: the draws to reject
    while (static_cast<uint64_t>(product) < threshold) product = static_cast<unsigned __int128>(random()) * bound;
  }
  return static_cast<uint64_t>(product >> 64);
}

// Uniform in [0, 1), from the top 53 bits of one draw.
inline double uniform_unit(std::mt19937_64& random) { return static_cast<double>(random() >> 11) * 0x1.0p-53; }

}  // namespace connex
