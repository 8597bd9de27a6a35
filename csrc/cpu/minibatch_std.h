// Minibatch stddev on the CPU: the kernel of cpu/minibatch_std_kernel.h, one build per CPU capability
// (cpu/capability.h).
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/minibatch_std.h"
#include "cpu/capability.h"

namespace gan_kernels {

// How the CPU kernel walks a launch, the same in every build. A unit is one segment of one row of
// a (group, feature) block, at most `segment` positions: the unit of parallel work and of the
// partial sums, so that no sum depends on the thread count or on the vector width. NCHW blocks are
// one row (their rows follow each other in x and in y), so their units are long whatever H*W is.
struct MinibatchStdCpuPlan {
  MinibatchStdLayout layout;  // of minibatch_std_layout, with the rows joined where they can be
  int64_t segment;
  int64_t segments;  // per row
  int64_t units;     // groups * features * rows * segments
};

MinibatchStdCpuPlan minibatch_std_cpu_plan(const MinibatchStdParams& p);

// Scratch the CPU kernel needs: one partial sum per unit (forward, double backward), then one
// coefficient per (group, feature) (backward, double backward).
size_t minibatch_std_cpu_workspace_bytes(const MinibatchStdParams& p);

// Runs the launch `p` on the CPU, in parallel, with the build for the capability ATen runs at.
void minibatch_std_cpu(const MinibatchStdParams& p);

// Runs the launch `p`, walked as `plan` says, in parallel.
GAN_KERNELS_DECLARE_CPU_KERNEL(void, minibatch_std_cpu_kernel,
                               (const MinibatchStdParams& p, const MinibatchStdCpuPlan& plan))

}  // namespace gan_kernels
