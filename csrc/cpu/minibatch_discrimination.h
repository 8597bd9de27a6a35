#pragma once

#include "common/minibatch_discrimination.h"

namespace gan_kernels {

// Runs the launch `p` on the CPU, one parallel task per kernel b.
void minibatch_discrimination_cpu(const MinibatchDiscriminationParams& p);

}  // namespace gan_kernels
