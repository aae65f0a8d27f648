#pragma once
// Order-keeping passes over large index ranges, split between connex's
// threads (share_work(): all the cores training uses, even where torch's own
// pool is kept at one thread beside the fused kernel): a filter and a stable
// counting sort. Validating, compiling and editing a graph of a million
// connections is a handful of such passes; run on one core each, they cost
// more than several training steps.
#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

#include "work_share.h"

namespace connex {

// Calls allocate(count) once with the number of i in [0, n) for which
// keep(i) holds, then emit(i, slot) for each such i, where slot numbers them
// 0, 1, ... in ascending i. keep is called twice per index (count, then
// fill) from several threads at once, so it must be a pure, thread-safe
// predicate; emit is called from several threads for distinct slots. emit
// may also be called for an i that keep rejects, with the slot of the next
// kept one, which then overwrites what it wrote: the fill has no branch on
// keep(i) (what is kept falls at random in an edit, and that branch was
// most of the pass), so emit must be safe to call for every i.
template <typename Keep, typename Allocate, typename Emit>
void parallel_compact(int64_t n, const Keep& keep, const Allocate& allocate, const Emit& emit) {
  constexpr int64_t kChunk = int64_t(1) << 15;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<int64_t> start(chunks + 1, 0);
  share_work(0, chunks, 1, [&](int64_t first, int64_t last) {
    for (int64_t k = first; k < last; ++k) {
      int64_t count = 0;
      for (int64_t i = k * kChunk, end = std::min(n, (k + 1) * kChunk); i < end; ++i) count += keep(i) ? 1 : 0;
      start[k + 1] = count;
    }
  });
  std::partial_sum(start.begin(), start.end(), start.begin());
  allocate(start.back());
  share_work(0, chunks, 1, [&](int64_t first, int64_t last) {
    for (int64_t k = first; k < last; ++k) {
      // Past the chunk's last kept index, slot is the next chunk's first:
      // nothing more is written (a branch that fails only there).
      int64_t slot = start[k];
      const int64_t slot_end = start[k + 1];
      for (int64_t i = k * kChunk, end = std::min(n, (k + 1) * kChunk); i < end; ++i) {
        const bool kept = keep(i);
        if (slot < slot_end) emit(i, slot);
        slot += kept;
      }
    }
  });
}

// Ranges worth splitting `items` keyed over `num_keys` into for
// counting_sort_in_parts(): one per thread (at most 8) for large inputs,
// and no more than items / num_keys, since each part counts into an array of
// num_keys entries.
inline int64_t counting_sort_parts(int64_t items, int64_t num_keys) {
  if (items < (int64_t(1) << 16)) return 1;
  return std::max<int64_t>(
      1, std::min<int64_t>({static_cast<int64_t>(share_work_threads()), 8, items / std::max<int64_t>(num_keys, 1)}));
}

// A stable counting sort of items given in `parts` (consecutive runs, in
// order). walk(part, slot_of) must call slot_of(key) once for each item of
// the part, in order, with its key in [0, num_keys); it is called twice per
// part, on connex's threads. In the first call slot_of counts and returns -1
// (the walk should write nothing); in the second it returns the item's
// position in key order, ties kept in item order. Returns the offsets:
// key k's items sit at [offsets[k], offsets[k + 1]). between(offsets), when
// given, runs once between the two calls (the walk may need what follows from
// the offsets to place its items).
template <typename Walk, typename Between>
std::vector<int64_t> counting_sort_in_parts(int64_t parts, int64_t num_keys, const Walk& walk, const Between& between) {
  std::vector<std::vector<int64_t>> next(parts, std::vector<int64_t>(num_keys, 0));
  share_work(0, parts, 1, [&](int64_t first, int64_t last) {
    for (int64_t p = first; p < last; ++p) {
      int64_t* count = next[p].data();
      walk(p, [count](int64_t key) -> int64_t { return ++count[key], -1; });
    }
  });
  // Part p's items of key k start after the earlier parts' items of key k.
  std::vector<int64_t> offsets(num_keys + 1, 0);
  for (int64_t k = 0; k < num_keys; ++k) {
    int64_t at = offsets[k];
    for (int64_t p = 0; p < parts; ++p) {
      const int64_t count = next[p][k];
      next[p][k] = at;
      at += count;
    }
    offsets[k + 1] = at;
  }
  between(static_cast<const std::vector<int64_t>&>(offsets));
  share_work(0, parts, 1, [&](int64_t first, int64_t last) {
    for (int64_t p = first; p < last; ++p) {
      int64_t* slot = next[p].data();
      walk(p, [slot](int64_t key) -> int64_t { return slot[key]++; });
    }
  });
  return offsets;
}

template <typename Walk>
std::vector<int64_t> counting_sort_in_parts(int64_t parts, int64_t num_keys, const Walk& walk) {
  return counting_sort_in_parts(parts, num_keys, walk, [](const std::vector<int64_t>&) {});
}

}  // namespace connex
