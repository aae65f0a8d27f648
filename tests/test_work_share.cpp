// share_work(), the fused kernel's parallel loop: it covers its range
// exactly once in chunks of at least the grain, runs on torch's thread
// count, runs nested and concurrent calls serially, passes the first
// exception on, and does not wait for a worker that has not started. And
// the passes built on it and beside it (parallel_passes.h, selection.h):
// a filter that keeps order, a selection of the smallest keys.
#include <atomic>
#include <chrono>
#include <algorithm>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <stdexcept>
#include <thread>

#include "../connex/src/parallel_passes.h"
#include "../connex/src/selection.h"
#include "../connex/src/work_share.h"
#include "test_util.h"

using namespace connex;

namespace {

// Runs `f` with torch at `threads` intra-op threads, then restores the setting.
template <typename F>
void with_threads(int threads, F f) {
  const int previous = torch::get_num_threads();
  torch::set_num_threads(threads);
  f();
  torch::set_num_threads(previous);
}

}  // namespace

TEST(WorkShare, RunsOnTwoThreadsWhenAskedAndOneOtherwise) {
  reset_share_chooser();  // other tests' regions may have sent it serial
  // Chunks that sleep leave a worker time to wake and claim some; on a busy
  // machine (tests run in parallel) it may take a few tries.
  auto threads_seen = [] {
    size_t most = 0;
    for (int attempt = 0; attempt < 30 && most < 2; ++attempt) {
      std::mutex mutex;
      std::set<std::thread::id> ids;
      share_work(0, 64, 1, [&](int64_t, int64_t) {
        {
          std::lock_guard<std::mutex> lock(mutex);
          ids.insert(std::this_thread::get_id());
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      });
      most = std::max(most, ids.size());
    }
    return most;
  };
  with_threads(2, [&] { EXPECT_EQ(threads_seen(), 2u); });
  with_threads(1, [&] { EXPECT_EQ(threads_seen(), 1u); });
  EXPECT_GE(share_work_workers(), 1);
}

TEST(WorkShare, CoversEveryIndexOnceInChunksOfAtLeastTheGrain) {
  std::mt19937_64 rng(3);
  with_threads(2, [&] {
    for (int trial = 0; trial < 300; ++trial) {
      const int64_t begin = std::uniform_int_distribution<int64_t>(-50, 50)(rng);
      const int64_t size = std::uniform_int_distribution<int64_t>(0, 5000)(rng);
      const int64_t grain = std::uniform_int_distribution<int64_t>(1, 700)(rng);
      std::vector<std::atomic<int>> hits(static_cast<size_t>(size));
      std::atomic<int64_t> short_chunks{0};
      share_work(begin, begin + size, grain, [&](int64_t first, int64_t last) {
        ASSERT_LT(first, last);
        if (last - first < grain && last != begin + size) ++short_chunks;
        for (int64_t i = first; i < last; ++i) ++hits[static_cast<size_t>(i - begin)];
      });
      for (int64_t i = 0; i < size; ++i) ASSERT_EQ(hits[static_cast<size_t>(i)].load(), 1) << "trial " << trial;
      EXPECT_EQ(short_chunks.load(), 0);
    }
  });
}

TEST(WorkShare, NestedCallsRunSeriallyInTheirChunk) {
  with_threads(2, [&] {
    std::atomic<int64_t> total{0};
    share_work(0, 8, 1, [&](int64_t first, int64_t last) {
      for (int64_t i = first; i < last; ++i) {
        const auto outer = std::this_thread::get_id();
        share_work(0, 1000, 1, [&](int64_t a, int64_t b) {
          EXPECT_EQ(std::this_thread::get_id(), outer);
          total += b - a;
        });
      }
    });
    EXPECT_EQ(total.load(), 8000);
  });
}

TEST(WorkShare, ConcurrentCallersEachCoverTheirRange) {
  with_threads(2, [&] {
    std::vector<std::thread> callers;
    std::vector<int64_t> sums(4, 0);
    for (int c = 0; c < 4; ++c)
      callers.emplace_back([&, c] {
        for (int round = 0; round < 50; ++round) {
          std::atomic<int64_t> sum{0};
          share_work(0, 10000, 16, [&](int64_t first, int64_t last) {
            for (int64_t i = first; i < last; ++i) sum += i;
          });
          sums[c] += sum.load();
        }
      });
    for (auto& t : callers) t.join();
    for (int64_t s : sums) EXPECT_EQ(s, 50 * (9999LL * 10000 / 2));
  });
}

TEST(WorkShare, PassesTheFirstExceptionOnAfterClaimedChunksFinish) {
  with_threads(2, [&] {
    std::atomic<int> running{0}, finished{0};
    try {
      share_work(0, 100, 1, [&](int64_t first, int64_t last) {
        ++running;
        if (first <= 10 && 10 < last) throw std::runtime_error("chunk at 10 failed");
        std::this_thread::sleep_for(std::chrono::microseconds(200));
        ++finished;
        --running;
      });
      ADD_FAILURE() << "expected the body's exception";
    } catch (const std::runtime_error& e) {
      EXPECT_STREQ(e.what(), "chunk at 10 failed");
    }
    EXPECT_EQ(running.load(), 1);  // only the throwing chunk never finished
  });
}

// A worker kept from its chunks (here: busy in a long first chunk) does not
// hold the caller back beyond that chunk: the caller takes all the rest.
TEST(WorkShare, TheCallerTakesTheChunksAWorkerDoesNotClaim) {
  reset_share_chooser();
  with_threads(2, [&] {
    std::mutex mutex;
    std::map<std::thread::id, int64_t> done_by;
    const auto caller = std::this_thread::get_id();
    share_work(0, 40, 1, [&](int64_t first, int64_t last) {
      std::this_thread::sleep_for(std::chrono::milliseconds(std::this_thread::get_id() == caller ? 1 : 50));
      std::lock_guard<std::mutex> lock(mutex);
      done_by[std::this_thread::get_id()] += last - first;
    });
    int64_t total = 0;
    for (const auto& [id, count] : done_by) total += count;
    EXPECT_EQ(total, 40);
    EXPECT_GE(done_by[caller], 30);  // the worker held one or two chunks of 40 / 8
  });
}

// The chooser, fed windows of made-up costs: it starts shared, tries serial
// after the first window and keeps the cheaper way, tries the other way
// again after 1, 2, 4 ... windows while its choice holds, and follows a
// change of load within one try.
TEST(WorkShare, ChooserKeepsTheCheaperWayAndFollowsAChange) {
  using Ms = std::chrono::milliseconds;
  ShareChooser chooser;
  // A window's regions, each `cost` long (per index: cost / 10) the way
  // the chooser says now; returns that way.
  auto window = [&](int serial_ms, int shared_ms) {
    const bool shared = chooser.shared();
    for (int64_t r = 0; r < ShareChooser::kWindow; ++r) chooser.record(Ms(shared ? shared_ms : serial_ms), 10);
    return shared;
  };
  // Sharing is slow (a busy machine): after trying serial once, it stays serial.
  EXPECT_TRUE(window(100, 300));
  EXPECT_FALSE(window(100, 300));  // the try
  std::vector<bool> ways;
  for (int k = 0; k < 20; ++k) ways.push_back(window(100, 300));
  // Tries of sharing after 1, 2, 4, 8 windows of serial (each confirming serial).
  const std::vector<bool> expected{false, true,  false, false, true,  false, false, false, false, true,
                                   false, false, false, false, false, false, false, false, true,  false};
  EXPECT_EQ(ways, expected);
  // The load goes: the next try of sharing finds it cheaper and keeps it.
  int windows = 0;
  while (!window(100, 100) && windows < 40) ++windows;  // up to the next try (16 windows away at most)
  EXPECT_LE(windows, 16);
  EXPECT_TRUE(window(100, 100));
  // Sharing within 5 % of serial keeps winning: only the tries run serial.
  int shared = 0;
  for (int k = 0; k < 40; ++k) shared += window(100, 104) ? 1 : 0;
  EXPECT_GE(shared, 34);  // tries of serial after 1, 2, 4 ... windows
  // Load arrives while sharing: the first dearer window brings the try of
  // serial forward to the next window, which then stays.
  while (!window(100, 104)) {
  }
  EXPECT_TRUE(window(100, 300));
  EXPECT_FALSE(window(100, 300));
  EXPECT_FALSE(window(100, 300));
}

// A way that collapses (30 times dearer than the other) runs only kWarmUp +
// kEarliest regions of its window: whether it is the way in use (the other
// is tried at once, and kept) or the way being tried (the choice stands).
TEST(WorkShare, ChooserEndsAWindowOfACollapsedWayEarly) {
  using Ms = std::chrono::milliseconds;
  ShareChooser chooser;
  // Regions the way `shared` runs in a row, each as dear as that way costs, up to `limit`.
  auto run = [&](int serial_ms, int shared_ms, int64_t limit) {
    const bool shared = chooser.shared();
    int64_t regions = 0;
    while (chooser.shared() == shared && regions < limit) {
      chooser.record(Ms(shared ? shared_ms : serial_ms), 10);
      ++regions;
    }
    return regions;
  };
  const int64_t early = ShareChooser::kWarmUp + ShareChooser::kEarliest;
  const int64_t window = ShareChooser::kWindow;
  EXPECT_EQ(run(1, 1, 1000), window);  // shares
  EXPECT_EQ(run(1, 1, 1000), window);  // the try of serial: a tie, so sharing stays
  EXPECT_TRUE(chooser.shared());
  EXPECT_EQ(run(1, 30, 1000), early);  // sharing collapses: serial is tried at once
  EXPECT_FALSE(chooser.shared());
  EXPECT_EQ(run(1, 30, window), window);  // the try runs its window and serial is kept
  EXPECT_FALSE(chooser.shared());
  EXPECT_EQ(run(1, 30, 1000), window);  // one window of serial, then sharing is tried
  EXPECT_TRUE(chooser.shared());
  EXPECT_EQ(run(1, 30, 1000), early);  // the try of the collapsed way ends early
  EXPECT_FALSE(chooser.shared());
  // Twice as dear is no collapse: a window runs out.
  ShareChooser mild;
  for (int64_t r = 0; r < ShareChooser::kWindow; ++r) mild.record(Ms(1), 10);
  EXPECT_FALSE(mild.shared());
  for (int64_t r = 0; r + 1 < ShareChooser::kWindow; ++r) mild.record(Ms(2), 10);
  EXPECT_FALSE(mild.shared());
  mild.record(Ms(2), 10);
  EXPECT_TRUE(mild.shared());
  // Regions of no indices cost nothing either way: no window ends early on them.
  ShareChooser empty;
  for (int64_t r = 0; r < 3 * ShareChooser::kWindow; ++r) empty.record(Ms(1), 10);
  const bool way = empty.shared();
  for (int64_t r = 0; r + 1 < ShareChooser::kWindow; ++r) {
    empty.record(Ms(1), 0);
    EXPECT_EQ(empty.shared(), way);
  }
}

// Windows fall across train steps as they may: a try of serial that holds
// only cheap regions of one kind must not read as serial being cheaper.
// Each kind is compared with itself.
TEST(WorkShare, ChooserComparesEachKindOfRegionWithItself) {
  using Ms = std::chrono::milliseconds;
  ShareChooser chooser;
  // Kind 1: 10 indices, 1 ms shared, 2 ms serial. Kind 2: 1000 indices, 1 ms either way.
  auto window = [&](bool both_kinds) {
    const bool shared = chooser.shared();
    for (int64_t r = 0; r < ShareChooser::kWindow; ++r) {
      const uint64_t kind = both_kinds && r % 2 == 0 ? 1 : 2;
      chooser.record(Ms(kind == 1 && !shared ? 2 : 1), kind == 1 ? 10 : 1000, kind);
    }
    return shared;
  };
  EXPECT_TRUE(window(true));
  EXPECT_FALSE(window(false));  // the try: kind 2 alone, 1 µs an index against the shared window's 2
  EXPECT_TRUE(chooser.shared());
  // Both kinds timed both ways: sharing saves kind 1 half its time, so it stays.
  for (int k = 0; k < 10; ++k) window(true);
  int shared = 0;
  for (int k = 0; k < 20; ++k) shared += window(true) ? 1 : 0;
  EXPECT_GE(shared, 17);
}

TEST(ParallelPasses, CompactKeepsWhatPassesInOrderOnOneAndTwoThreads) {
  std::mt19937_64 rng(5);
  for (int threads : {1, 2})
    with_threads(threads, [&] {
      for (int trial = 0; trial < 40; ++trial) {
        // Up to several chunks of 2^15, kept at a random rate (all and none included).
        const int64_t n = std::uniform_int_distribution<int64_t>(0, 200000)(rng);
        const double rate = trial % 10 == 0 ? 0.0 : trial % 10 == 1 ? 1.0 : std::uniform_real_distribution<>(0, 1)(rng);
        std::vector<uint8_t> keep(static_cast<size_t>(n));
        for (auto& k : keep) k = std::uniform_real_distribution<>(0, 1)(rng) < rate;
        std::vector<int64_t> expected;
        for (int64_t i = 0; i < n; ++i)
          if (keep[i]) expected.push_back(i);
        std::vector<int64_t> kept;
        parallel_compact(
            n, [&](int64_t i) { return keep[i] != 0; }, [&](int64_t count) { kept.assign(count, -1); },
            [&](int64_t i, int64_t slot) {
              ASSERT_LT(slot, static_cast<int64_t>(kept.size()));
              kept[slot] = i;
            });
        ASSERT_EQ(kept, expected) << "trial " << trial << " on " << threads << " thread(s)";
      }
    });
}

namespace {

// Whether keep_smallest(keys, count, less) left exactly the `count` smallest, checked by a sort.
template <typename Key, typename Less = std::less<Key>>
void expect_smallest(std::vector<Key> keys, size_t count, const std::string& what, const Less& less = Less()) {
  auto sorted = keys;
  std::sort(sorted.begin(), sorted.end(), less);
  sorted.resize(std::min(count, sorted.size()));
  keep_smallest(keys, count, less);
  std::sort(keys.begin(), keys.end(), less);
  EXPECT_EQ(keys, sorted) << what << ", " << count << " of them";
}

}  // namespace

TEST(Selection, KeepSmallestKeepsTheSmallestWhateverTheOrder) {
  std::mt19937_64 rng(7);
  for (int trial = 0; trial < 60; ++trial) {
    const size_t n = std::uniform_int_distribution<size_t>(0, trial % 3 == 0 ? 3000 : 300000)(rng);
    const size_t count = trial % 7 == 0 ? n : std::uniform_int_distribution<size_t>(0, n)(rng);
    // Weight magnitudes with their index (distinct keys, as a rewiring's),
    // in random order, ascending, descending, and crowded into few values.
    std::vector<uint64_t> keys(n);
    for (size_t i = 0; i < n; ++i) {
      const uint64_t magnitude = trial % 4 == 3 ? rng() % 3 : rng() >> 40;
      keys[i] = magnitude << 32 | i;
    }
    if (trial % 4 == 1) std::sort(keys.begin(), keys.end());
    if (trial % 4 == 2) std::sort(keys.rbegin(), keys.rend());
    expect_smallest(keys, count, "trial " + std::to_string(trial));
  }
}

TEST(Selection, KeepSmallestFallsBackWhereTheSampleMissesTheCut) {
  // Every key the sample reads (evenly spaced) is the smallest of all, so its
  // bracket lies far below the cut; then all of them are the largest.
  const size_t n = 100000, s = size_t{1} << 13;
  for (bool sample_small : {true, false}) {
    std::vector<int64_t> keys(n);
    for (size_t i = 0; i < n; ++i) keys[i] = static_cast<int64_t>(i) + 1000000;
    for (size_t k = 0; k < s; ++k) keys[k * n / s] = sample_small ? -static_cast<int64_t>(k) - 1 : 10000000 + k;
    for (size_t count : {size_t{1}, n / 3, n / 2, n - 1}) expect_smallest(keys, count, "a misleading sample");
  }
}

TEST(Selection, KeepSmallestTakesAnOrderAndKeysOfAnyType) {
  // The largest scores first, ties by key: RigL's order of candidates.
  std::mt19937_64 rng(11);
  std::vector<std::pair<double, int64_t>> scored(120000);
  for (size_t i = 0; i < scored.size(); ++i) scored[i] = {static_cast<double>(rng() % 1000), static_cast<int64_t>(i)};
  auto before = [](const std::pair<double, int64_t>& a, const std::pair<double, int64_t>& b) {
    return a.first != b.first ? a.first > b.first : a.second < b.second;
  };
  for (size_t count : {size_t{0}, size_t{1}, size_t{777}, size_t{60000}, scored.size() - 1})
    expect_smallest(scored, count, "scores", before);
}
