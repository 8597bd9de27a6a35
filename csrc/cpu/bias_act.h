// bias_act on the CPU: the kernel of cpu/bias_act_kernel.h, one build per CPU capability (cpu/capability.h).
#pragma once

#include <cstdint>

#include "cpu/capability.h"

namespace gan_kernels {

struct BiasActParams;  // common/bias_act.h

// Runs the launch `p` in parallel, with the build of the kernel for the capability ATen runs at.
void bias_act_cpu(const BiasActParams& p);

// Writes elements [begin, end) (in memory order) of the launch `p`.
GAN_KERNELS_DECLARE_CPU_KERNEL(void, bias_act_cpu_range, (const BiasActParams& p, int64_t begin, int64_t end))

}  // namespace gan_kernels
