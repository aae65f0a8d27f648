// The fused kernel's scratch pool: reuse, the bound on blocks kept, alignment,
// and returns from other threads; and, through a network, that a block still
// held by an autograd graph is never handed to a second forward.
#include <cstdint>
#include <thread>

#include "../connex/src/scratch_memory.h"
#include "test_util.h"

using namespace connex;
using namespace connex::testing;

TEST(ScratchMemory, HandsOutAFreedBlockAgain) {
  ScratchMemory pool;
  const auto a = pool.take(1000);
  ASSERT_NE(a.data, nullptr);
  EXPECT_GE(a.capacity, 1000u);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(a.data) % 64, 0u);
  pool.give_back(a);
  EXPECT_EQ(pool.free_blocks(), 1u);
  const auto b = pool.take(800);  // fits the freed block
  EXPECT_EQ(b.data, a.data);
  EXPECT_EQ(pool.free_blocks(), 0u);
  const auto c = pool.take(5000);  // nothing free fits: a new block
  EXPECT_NE(c.data, b.data);
  pool.give_back(b);
  pool.give_back(c);
}

TEST(ScratchMemory, PicksTheSmallestFreeBlockThatFits) {
  ScratchMemory pool;
  const auto big = pool.take(1 << 20), small = pool.take(1 << 12);
  pool.give_back(big);
  pool.give_back(small);
  const auto again = pool.take(100);
  EXPECT_EQ(again.data, small.data);
  pool.give_back(again);
}

TEST(ScratchMemory, KeepsAtMostItsBoundAndTheLargestBlocks) {
  ScratchMemory pool(2);
  const auto a = pool.take(100), b = pool.take(10000), c = pool.take(1000000);
  pool.give_back(a);
  pool.give_back(b);
  pool.give_back(c);  // three free, bound two: the 100-byte block goes
  EXPECT_EQ(pool.free_blocks(), 2u);
  const auto x = pool.take(1), y = pool.take(1);
  EXPECT_TRUE((x.data == b.data && y.data == c.data) || (x.data == c.data && y.data == b.data));
  EXPECT_EQ(pool.free_blocks(), 0u);
  pool.give_back(x);
  pool.give_back(y);
}

TEST(ScratchMemory, KeepsAtMostItsByteBound) {
  ScratchMemory pool(8, 10000);
  const auto huge = pool.take(20000);  // over the bound alone: freed on return, never kept
  pool.give_back(huge);
  EXPECT_EQ(pool.free_blocks(), 0u);
  const auto a = pool.take(3000), b = pool.take(3000), c = pool.take(6000);
  pool.give_back(a);
  pool.give_back(b);
  EXPECT_EQ(pool.free_blocks(), 2u);
  pool.give_back(c);  // 12k held would pass 10k: the smallest go until it fits
  EXPECT_EQ(pool.free_blocks(), 2u);
  const auto again = pool.take(5000);
  EXPECT_EQ(again.data, c.data);
  pool.give_back(again);
}

TEST(ScratchMemory, LargeBlocksSitOnHugePageBoundaries) {
  ScratchMemory pool;
  const auto block = pool.take(size_t(5) << 20);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(block.data) % (size_t(2) << 20), 0u);
  EXPECT_EQ(block.capacity, size_t(6) << 20);
  static_cast<char*>(block.data)[block.capacity - 1] = 1;  // the whole capacity is usable
  pool.give_back(block);
}

TEST(ScratchMemory, BlocksComeBackFromOtherThreads) {
  ScratchMemory pool(64);
  std::vector<ScratchMemory::Block> blocks;
  for (int i = 0; i < 32; ++i) blocks.push_back(pool.take(256 + i));
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int i = t; i < 32; i += 4) pool.give_back(blocks[i]);
    });
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(pool.free_blocks(), 32u);
}

// Two forwards before one backward: the first forward's value array is held
// by the autograd graph while the second runs, so each needs its own block.
// Gradients must equal those of the two passes taken one at a time.
TEST(ScratchMemory, FusedForwardsHeldTogetherGetTheirOwnBlocks) {
  NeuralNetwork net(readme_spec(), NeuralNetworkOptions()
                                       .dtype(torch::kFloat64)
                                       .hidden_activation("gelu")
                                       .execution(ExecutionOptions().fused(true))
                                       .seed(4));
  ASSERT_TRUE(net->uses_fused_kernel());
  auto x1 = torch::randn({7, 1}, torch::kFloat64), x2 = torch::randn({7, 1}, torch::kFloat64);
  auto y1 = net->forward(x1);
  auto y2 = net->forward(x2);
  (y1.pow(2).sum() + y2.sum()).backward();
  const auto together = net->weight_tensor().grad().clone();

  net->zero_grad();
  net->forward(x1).pow(2).sum().backward();
  net->forward(x2).sum().backward();
  EXPECT_TRUE(torch::allclose(net->weight_tensor().grad(), together, 1e-12, 1e-12));
  EXPECT_TRUE(torch::equal(net->forward(x1), y1));
}
