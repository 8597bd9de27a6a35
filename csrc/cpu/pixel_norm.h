#pragma once

#include "common/pixel_norm.h"

namespace gan_kernels {

// Runs the launch `p` on the CPU, in parallel.
void pixel_norm_cpu(const PixelNormParams& p);

}  // namespace gan_kernels
