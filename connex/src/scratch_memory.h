#pragma once
// Scratch memory the fused kernel reuses from one training step to the next.
//
// The kernel needs a few [neurons, batch] arrays per step (values, perhaps
// pre-activations, gradients): 25 MB each for a 100k-neuron net at batch 64.
// Taken from malloc, blocks that large come from mmap and go back to the
// system when freed, so every step faults every page in again, a large share
// of a big network's train step (BENCHMARKS.md). Blocks here are kept once freed (up to a
// count and a byte bound per pool) and handed out again; those of 2 MiB or more are asked to be backed by transparent
// huge pages, since the kernel reads their rows at random and 4 KiB pages
// would cost a TLB miss on most of those reads.
//
// Thread-safe: a block may be returned from any thread (autograd frees saved
// tensors where it likes). Memory is not cleared between uses.
#include <cstddef>
#include <memory>
#include <mutex>
#include <vector>

namespace connex {

class ScratchMemory {
 public:
  // At most `keep` free blocks and `max_bytes` of them are held; the rest go
  // back to the system (the smallest first), so one large-batch call leaves
  // at most this much behind for the network's lifetime.
  explicit ScratchMemory(size_t keep = 6, size_t max_bytes = size_t(256) << 20) : keep_(keep), max_bytes_(max_bytes) {
    free_.reserve(keep_ + 1);  // give_back() runs in deleters: it must not need to allocate
  }
  ~ScratchMemory();
  ScratchMemory(const ScratchMemory&) = delete;
  ScratchMemory& operator=(const ScratchMemory&) = delete;

  struct Block {
    void* data = nullptr;
    size_t capacity = 0;
  };
  // A block of at least `bytes` bytes (at least one), 64-byte aligned: the
  // smallest free one that fits, or a new one. Give it back exactly once.
  Block take(size_t bytes);
  void give_back(Block block);

  // Free blocks held now (tests).
  size_t free_blocks() const;

 private:
  size_t keep_, max_bytes_, held_bytes_ = 0;
  mutable std::mutex mutex_;
  std::vector<Block> free_;
};

}  // namespace connex
