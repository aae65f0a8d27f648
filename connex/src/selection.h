#pragma once
// keep_smallest(): the weakest share of a group of connections (a rewiring's
// drops, a pruning's cut) without std::nth_element's passes over all of
// them. nth_element partitions the whole range two or three times, each
// swap behind a branch that a random order mispredicts: most of a
// 1M-connection rewiring's selection. Here a sample brackets the cut, one
// pass keeps what lies below the bracket and collects what lies within it,
// and only that small remainder is partitioned. Internal.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <vector>

namespace connex {

// The ranks in a sorted sample of `sampled` that bracket the cut of `wanted`
// among `total` items: the cut falls at rank wanted·sampled/total, give or
// take sqrt(sampled)/2, and the bracket spans 6 of that either side. `near`
// may be negative and `far` past the sample (no bracket on that side).
// keep_smallest() and RigL's growth (sparse_training.cpp) both draw theirs here.
struct SampleBracket {
  std::ptrdiff_t near, far;  // the ranks before and after the cut's
  double margin;             // how far each lies from the cut's rank
};
inline SampleBracket sample_bracket(double wanted, double total, size_t sampled) {
  const double rank = wanted * static_cast<double>(sampled) / total;
  const double margin = 3 * std::sqrt(static_cast<double>(sampled)) + 2;
  return {static_cast<std::ptrdiff_t>(std::floor(rank - margin)), static_cast<std::ptrdiff_t>(std::ceil(rank + margin)),
          margin};
}

// Leaves in `keys` only its `count` smallest under `less` (a strict order in
// which no two keys are equal), in no particular order: the set that
// std::nth_element would put first. Expected linear time, one pass over the
// keys but for a sample of them; a sample that misses the cut (all but
// impossible for keys in any order) falls back on nth_element, as does a
// count of more than half the keys (in place, where the pass would copy
// most of them).
template <typename Key, typename Less = std::less<Key>>
void keep_smallest(std::vector<Key>& keys, size_t count, const Less& less = Less()) {
  const size_t n = keys.size();
  if (count >= n) return;
  if (count == 0) return keys.clear();
  constexpr size_t kSmall = size_t{1} << 14;
  auto fall_back = [&] {
    std::nth_element(keys.begin(), keys.begin() + static_cast<std::ptrdiff_t>(count), keys.end(), less);
    keys.resize(count);
  };
  if (n <= kSmall || count > n / 2) return fall_back();
  // A sample of keys evenly spaced through the range.
  const size_t s = std::min<size_t>(size_t{1} << 13, n / 8);
  std::vector<Key> sample(s);
  for (size_t k = 0; k < s; ++k) sample[k] = keys[k * n / s];
  const SampleBracket bracket = sample_bracket(static_cast<double>(count), static_cast<double>(n), s);
  const std::ptrdiff_t low_rank = bracket.near, high_rank = bracket.far;
  const bool has_low = low_rank >= 0, has_high = high_rank < static_cast<std::ptrdiff_t>(s);
  Key low{}, high{};
  if (has_low) {
    std::nth_element(sample.begin(), sample.begin() + low_rank, sample.end(), less);
    low = sample[low_rank];
  }
  if (has_high) {
    std::nth_element(sample.begin() + std::max<std::ptrdiff_t>(low_rank, 0), sample.begin() + high_rank, sample.end(),
                     less);
    high = sample[high_rank];
  }
  // One pass without a branch on a key (where keys fall relative to the
  // bracket is random; a branch on it cost twice the pass): each key is
  // written to both lists, and each list's end moves on only where the key
  // belongs there. A list that fills (one entry past its room, which every
  // further key overwrites) means the sample missed.
  const size_t room = static_cast<size_t>(4 * bracket.margin * static_cast<double>(n) / static_cast<double>(s));
  std::vector<Key> below(count + 1), within(room + 1);
  size_t taken = 0, held = 0;
  {
    const Key* key = keys.data();
    Key* to_below = below.data();
    Key* to_within = within.data();
    for (size_t i = 0; i < n; ++i) {
      const bool is_below = has_low && less(key[i], low);
      const bool is_within = !is_below & (!has_high || less(key[i], high));
      to_below[taken < count ? taken : count] = key[i];
      taken += is_below;
      to_within[held < room ? held : room] = key[i];
      held += is_within;
    }
  }
  if (held > room) return fall_back();
  within.resize(held);
  if (taken > count || taken + within.size() < count) return fall_back();
  const size_t rest = count - taken;
  if (rest < within.size())
    std::nth_element(within.begin(), within.begin() + static_cast<std::ptrdiff_t>(rest), within.end(), less);
  std::copy(within.begin(), within.begin() + static_cast<std::ptrdiff_t>(rest), below.begin() + taken);
  below.resize(count);
  keys.swap(below);
}

}  // namespace connex
