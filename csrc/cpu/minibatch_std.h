#pragma once

#include <cstddef>

#include "common/minibatch_std.h"

namespace gan_kernels {

// Scratch the CPU kernels need: one partial sum per row of each (group, feature) block (forward,
// double backward), then one coefficient per (group, feature) (backward, double backward).
size_t minibatch_std_cpu_workspace_bytes(const MinibatchStdParams& p);

// Runs the launch `p` on the CPU, in parallel.
void minibatch_std_cpu(const MinibatchStdParams& p);

}  // namespace gan_kernels
