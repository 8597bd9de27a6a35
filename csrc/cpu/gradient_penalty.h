#pragma once

#include <cstdint>

#include "common/gradient_penalty.h"

namespace gan_kernels {

// The chunk the CPU kernels reduce a sample in (GradientPenaltyParams::chunk): each chunk is one
// parallel task.
constexpr int64_t kCpuGradientPenaltyChunk = 16384;

// Runs the launch `p` on the CPU, in parallel.
void gradient_penalty_cpu(const GradientPenaltyParams& p);

}  // namespace gan_kernels
