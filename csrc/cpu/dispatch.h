// The CPU column of the dtype table (common/dtype.h), for dispatch_dtype<CpuElements>.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "common/dtype.h"

namespace gan_kernels {

struct CpuElements {
#define GAN_KERNELS_CPU_ELEMENT(name, scalar_type, cpu_type, cuda_type) using name = cpu_type;
  GAN_KERNELS_FOR_EACH_DTYPE(GAN_KERNELS_CPU_ELEMENT)
#undef GAN_KERNELS_CPU_ELEMENT
};

// Enough elements per parallel task to amortise the thread hand-off.
constexpr int64_t kElementsPerTask = 32768;

}  // namespace gan_kernels
