// Memory for the large outputs our ops allocate on the CPU: a cache of freed blocks, and transparent
// huge pages.
//
// A fresh output of a few MB or more costs one page fault per 4 KiB page on its first write, and
// glibc gives such outputs fresh pages on every call: above its mmap threshold each is a mapping of
// its own, and below it a freed block at the top of the heap goes back to the OS once the top passes
// the trim threshold. The faults, not the arithmetic, then set the time of a pixel norm or bias_act
// at large shapes: filling a fresh 64 MB tensor took 16 ms on our AVX-512 Xeons against 5 ms for a
// copy into an existing one, and on our AVX2 EPYC virtual machines 43-48 ms to fill against 4.5 ms
// for an existing one (each first touch of a page there also faults in the host). So the outputs
// of 1 MiB and more come from blocks this cache keeps after their tensors are freed, as PyTorch's
// CUDA caching allocator does on the GPU: a training step allocates the same shapes every step, and
// from the second step on their pages are already there. The cache holds at most its limit of freed
// blocks (GAN_KERNELS_CPU_CACHE_MB, gan_kernels/_backend.py), dropping the least recently freed
// first; a block is reused only for an output of the same rounded size.
//
// On Linux every block is a mapping of its own, given back to the OS when the cache drops it. New
// blocks of 4 MiB and more are 2 MiB aligned and ask for transparent huge pages (512 times
// fewer faults on their first use; PyTorch's THP_MEM_ALLOC_ENABLE=1 does the same for every large
// tensor). Where the kernel's THP defrag setting is "madvise" or "always", such a fault may first
// compact memory, a stall of milliseconds where memory is fragmented: GAN_KERNELS_HUGE_PAGES=0
// turns the advice off.
#pragma once

#include <cstddef>

namespace gan_kernels {

// Outputs below this size come from the default allocator: glibc keeps such blocks in its heap.
constexpr size_t kCachedOutputBytes = size_t(1) << 20;
// Blocks from this size on ask for huge pages.
constexpr size_t kHugePageOutputBytes = size_t(4) << 20;
constexpr size_t kDefaultOutputCacheLimit = size_t(1) << 30;

struct OutputBlock {
  void* data;
  size_t capacity;  // bytes mapped: the request rounded up to the block granularity
  size_t bytes;     // bytes the current tensor asked for
};

// A block of at least `bytes`: a cached one of the same capacity, else a new one; nullptr where the
// memory cannot be had.
OutputBlock* acquire_output_block(size_t bytes);
// Into the cache, or back to the OS where holding it would pass the limit.
void release_output_block(OutputBlock* block);

struct OutputCacheStats {
  size_t live_bytes;  // capacity of the blocks tensors hold now
  size_t held_bytes;  // capacity of the freed blocks the cache keeps
  size_t limit_bytes;
};
OutputCacheStats output_cache_stats();
// The most freed bytes the cache keeps; 0 keeps none (and the ops use the default allocator).
void set_output_cache_limit(size_t bytes);
size_t output_cache_limit();
// Gives every cached block back to the OS.
void empty_output_cache();

// On by default; the process-wide switch behind GAN_KERNELS_HUGE_PAGES. Changing it empties the
// cache, so that every block from then on follows it.
void set_huge_page_outputs(bool enabled);
bool huge_page_outputs();

}  // namespace gan_kernels
