// Transparent huge pages for the large outputs our ops allocate on the CPU.
//
// A fresh output of tens of MB is a new mapping on glibc (above its mmap threshold), and its first
// write takes one page fault per 4 KiB page: on the 2-core Xeons we test on, filling a fresh 64 MB
// tensor takes 16 ms against 5 ms for a copy into an existing one, which makes the faults, not the
// kernel, the cost of a pixel norm or bias_act at large shapes. Asking for huge pages on the output
// (2 MiB, 512 times fewer faults) brought that fill to 7-9 ms. It is PyTorch's own remedy
// (THP_MEM_ALLOC_ENABLE=1), applied here only to the memory of the tensors an op of ours returns,
// which it fills entirely: no other allocation of the process changes. A hint: where the kernel
// has transparent huge pages off ("never") or the platform is not Linux, nothing changes. Where its
// defrag setting is "madvise" or "always", a fault in an advised range may first compact memory, a
// stall of milliseconds where memory is fragmented: GAN_KERNELS_HUGE_PAGES=0 (gan_kernels/_backend.py)
// turns the advice off.
#pragma once

#include <cstddef>

namespace gan_kernels {

// Outputs below this size keep the allocator's pages: the syscall is not worth it.
constexpr size_t kHugePageOutputBytes = size_t(4) << 20;

// Advises huge pages for the 2 MiB-aligned interior of [data, data + bytes) when bytes is at least
// kHugePageOutputBytes and the advice is on.
void advise_huge_pages(void* data, size_t bytes);

// On by default; the process-wide switch behind GAN_KERNELS_HUGE_PAGES.
void set_huge_page_outputs(bool enabled);
bool huge_page_outputs();

}  // namespace gan_kernels
