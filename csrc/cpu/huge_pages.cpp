#include "cpu/huge_pages.h"

#include <atomic>
#include <cstdint>

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace gan_kernels {
namespace {

std::atomic<bool> huge_page_outputs_enabled{true};

}  // namespace

void set_huge_page_outputs(bool enabled) { huge_page_outputs_enabled.store(enabled, std::memory_order_relaxed); }

bool huge_page_outputs() { return huge_page_outputs_enabled.load(std::memory_order_relaxed); }

void advise_huge_pages(void* data, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (bytes < kHugePageOutputBytes || !huge_page_outputs()) return;
  constexpr uintptr_t kHugePage = uintptr_t(2) << 20;
  const auto begin = reinterpret_cast<uintptr_t>(data);
  const uintptr_t first = (begin + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t last = (begin + bytes) & ~(kHugePage - 1);
  // The result is ignored on purpose: EINVAL where THP is compiled out, and the output is correct
  // either way.
  if (last > first) (void)madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}

}  // namespace gan_kernels
