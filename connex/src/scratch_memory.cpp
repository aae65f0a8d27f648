#include "scratch_memory.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdlib>
#include <new>

namespace connex {

namespace {

constexpr size_t kHugePage = size_t(2) << 20;

ScratchMemory::Block allocate(size_t bytes) {
  const bool huge = bytes >= kHugePage;
  const size_t alignment = huge ? kHugePage : 64;
  const size_t capacity = (std::max<size_t>(bytes, 1) + alignment - 1) / alignment * alignment;
  void* data = std::aligned_alloc(alignment, capacity);
  if (!data) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
  // Advice only: where transparent huge pages are off it changes nothing.
  if (huge) ::madvise(data, capacity, MADV_HUGEPAGE);
#endif
  return {data, capacity};
}

}  // namespace

ScratchMemory::~ScratchMemory() {
  for (const Block& block : free_) std::free(block.data);
}

ScratchMemory::Block ScratchMemory::take(size_t bytes) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto best = free_.end();
    for (auto it = free_.begin(); it != free_.end(); ++it)
      if (it->capacity >= bytes && (best == free_.end() || it->capacity < best->capacity)) best = it;
    if (best != free_.end()) {
      const Block block = *best;
      free_.erase(best);
      held_bytes_ -= block.capacity;
      return block;
    }
  }
  return allocate(bytes);
}

void ScratchMemory::give_back(Block block) {
  if (block.capacity > max_bytes_) {
    std::free(block.data);
    return;
  }
  std::lock_guard<std::mutex> lock(mutex_);
  free_.push_back(block);  // capacity reserved: never allocates
  held_bytes_ += block.capacity;
  // Over a bound: drop the smallest. The largest stay, since a request that
  // fits a large block never needs a new one, while a small block kept may
  // never fit again.
  while (free_.size() > keep_ || held_bytes_ > max_bytes_) {
    auto smallest = std::min_element(free_.begin(), free_.end(),
                                     [](const Block& a, const Block& b) { return a.capacity < b.capacity; });
    std::free(smallest->data);
    held_bytes_ -= smallest->capacity;
    free_.erase(smallest);
  }
}

size_t ScratchMemory::free_blocks() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return free_.size();
}

}  // namespace connex
