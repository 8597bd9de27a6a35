// The gradient penalty on the CPU: the kernel of cpu/gradient_penalty_kernel.h, one build per CPU
// capability (cpu/capability.h).
#pragma once

#include <cstdint>

#include "common/gradient_penalty.h"
#include "cpu/capability.h"

namespace gan_kernels {

// The chunk the CPU kernels reduce a sample in (GradientPenaltyParams::chunk): each chunk is one
// parallel task.
constexpr int64_t kCpuGradientPenaltyChunk = 16384;

// Runs the launch `p` on the CPU, in parallel, with the build for the capability ATen runs at.
void gradient_penalty_cpu(const GradientPenaltyParams& p);

GAN_KERNELS_DECLARE_CPU_KERNEL(void, gradient_penalty_cpu_kernel, (const GradientPenaltyParams& p))

}  // namespace gan_kernels
