#pragma once

#include "cuda/bias_act_math.h"

namespace gan_kernels {

// Runs the bias_act launch `p` (see cuda/bias_act_math.h) on the CPU, in parallel, with the widest
// vector build of the kernel that ATen itself uses on this CPU.
void bias_act_cpu(const BiasActParams& p);

}  // namespace gan_kernels
