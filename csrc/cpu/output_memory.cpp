#include "cpu/output_memory.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <mutex>
#include <new>
#include <vector>

#ifdef __linux__
#include <sys/mman.h>
#endif
#ifndef _WIN32
#include <pthread.h>
#endif

namespace gan_kernels {
namespace {

constexpr size_t kHugePage = size_t(2) << 20;
constexpr size_t kPage = size_t(4) << 10;

std::atomic<bool> huge_pages_enabled{true};

// Huge-page blocks are whole huge pages, so that every page of them can be one.
size_t alignment_for(size_t bytes) { return bytes >= kHugePageOutputBytes ? kHugePage : kPage; }

size_t capacity_for(size_t bytes) {
  const size_t granule = alignment_for(bytes);
  return (bytes + granule - 1) / granule * granule;
}

#ifdef __linux__
// A mapping of its own, aligned by trimming an over-sized one: its huge-page advice stays with it, and
// unmapping gives it back to the OS at once. From glibc's heap (aligned operator new below its mmap
// threshold, which grows with the blocks it frees) a block could come back already advised, and its
// advice would stay with the heap for PyTorch's other allocations.
void* map_block(size_t capacity) {
  const size_t alignment = alignment_for(capacity);
  const size_t span = capacity + alignment - kPage;
  void* mapped = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mapped == MAP_FAILED) return nullptr;
  const auto start = reinterpret_cast<uintptr_t>(mapped);
  const uintptr_t aligned = (start + alignment - 1) / alignment * alignment;
  if (aligned > start) munmap(mapped, aligned - start);
  const uintptr_t end = aligned + capacity;
  if (start + span > end) munmap(reinterpret_cast<void*>(end), start + span - end);
  void* data = reinterpret_cast<void*>(aligned);
#ifdef MADV_HUGEPAGE
  // The result is ignored on purpose: EINVAL where THP is compiled out, and the block works either way.
  if (capacity >= kHugePageOutputBytes && huge_pages_enabled.load(std::memory_order_relaxed)) {
    (void)madvise(data, capacity, MADV_HUGEPAGE);
  }
#endif
  return data;
}

void unmap_block(OutputBlock* block) {
  munmap(block->data, block->capacity);
  delete block;
}
#else
void* map_block(size_t capacity) {
  return ::operator new(capacity, std::align_val_t(alignment_for(capacity)), std::nothrow);
}

void unmap_block(OutputBlock* block) {
  ::operator delete(block->data, std::align_val_t(alignment_for(block->capacity)));
  delete block;
}
#endif

class OutputCache {
 public:
  OutputBlock* acquire(size_t bytes) {
    const size_t capacity = capacity_for(bytes);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      // The most recently freed block of this capacity: its pages are the likeliest still in cache.
      const auto found = std::find_if(held_.rbegin(), held_.rend(),
                                      [&](const OutputBlock* block) { return block->capacity == capacity; });
      if (found != held_.rend()) {
        OutputBlock* block = *found;
        held_.erase(std::next(found).base());
        held_bytes_ -= capacity;
        live_bytes_ += capacity;
        block->bytes = bytes;
        return block;
      }
    }
    void* data = map_block(capacity);
    if (data == nullptr) return nullptr;
    std::lock_guard<std::mutex> lock(mutex_);
    live_bytes_ += capacity;
    return new OutputBlock{data, capacity, bytes};
  }

  void release(OutputBlock* block) {
    std::vector<OutputBlock*> unmapped;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      live_bytes_ -= block->capacity;
      if (block->capacity > limit_) {
        unmapped.push_back(block);
      } else {
        size_t dropped = 0;
        while (held_bytes_ - dropped + block->capacity > limit_) {
          dropped += held_[unmapped.size()]->capacity;
          unmapped.push_back(held_[unmapped.size()]);
        }
        held_.erase(held_.begin(), held_.begin() + static_cast<std::ptrdiff_t>(unmapped.size()));
        held_bytes_ -= dropped;
        held_.push_back(block);
        held_bytes_ += block->capacity;
      }
    }
    // Outside the lock: giving tens of MB back to the OS takes a while.
    for (OutputBlock* b : unmapped) unmap_block(b);
  }

  OutputCacheStats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return {live_bytes_, held_bytes_, limit_};
  }

  void set_limit(size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    limit_ = bytes;
  }

  size_t limit() {
    std::lock_guard<std::mutex> lock(mutex_);
    return limit_;
  }

  // Held across fork() (pthread_atfork below): a child must not inherit the lock taken by a thread
  // it does not have, or its first large output would wait for it forever.
  void lock_for_fork() { mutex_.lock(); }
  void unlock_after_fork() { mutex_.unlock(); }

  void empty() {
    std::vector<OutputBlock*> unmapped;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      unmapped.swap(held_);
      held_bytes_ = 0;
    }
    for (OutputBlock* b : unmapped) unmap_block(b);
  }

 private:
  std::mutex mutex_;
  std::vector<OutputBlock*> held_;  // least recently freed first
  size_t held_bytes_ = 0;
  size_t live_bytes_ = 0;
  size_t limit_ = kDefaultOutputCacheLimit;
};

// Never destroyed: tensors may be freed during the interpreter's exit, after static destructors ran.
OutputCache& cache() {
  static auto* instance = [] {
    auto* created = new OutputCache();
#ifndef _WIN32
    // DataLoader workers and torch.multiprocessing children are forked while other threads of the
    // parent may be running our ops.
    pthread_atfork([] { cache().lock_for_fork(); }, [] { cache().unlock_after_fork(); },
                   [] { cache().unlock_after_fork(); });
#endif
    return created;
  }();
  return *instance;
}

}  // namespace

OutputBlock* acquire_output_block(size_t bytes) { return cache().acquire(bytes); }

void release_output_block(OutputBlock* block) { cache().release(block); }

OutputCacheStats output_cache_stats() { return cache().stats(); }

void set_output_cache_limit(size_t bytes) {
  cache().set_limit(bytes);
  if (bytes < cache().stats().held_bytes) cache().empty();
}

size_t output_cache_limit() { return cache().limit(); }

void empty_output_cache() { cache().empty(); }

void set_huge_page_outputs(bool enabled) {
  if (huge_pages_enabled.exchange(enabled, std::memory_order_relaxed) != enabled) cache().empty();
}

bool huge_page_outputs() { return huge_pages_enabled.load(std::memory_order_relaxed); }

}  // namespace gan_kernels
