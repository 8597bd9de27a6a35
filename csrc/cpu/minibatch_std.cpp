#include "cpu/minibatch_std.h"

#include <ATen/OpMathType.h>

#include <algorithm>

#include "cpu/dispatch.h"

namespace gan_kernels {

// Positions per unit: enough to amortise a unit's partial sum and index arithmetic, few enough that
// the 8 blocks of a [32, 512, 8, 8] batch split into units for every core.
constexpr int64_t kSegment = 2048;

MinibatchStdCpuPlan minibatch_std_cpu_plan(const MinibatchStdParams& p) {
  MinibatchStdLayout l = minibatch_std_layout(p);
  if (l.x_row_stride == l.cols && l.y_row_stride == l.cols) {
    l.cols *= l.rows;
    l.rows = 1;
    l.x_row_stride = l.cols;
    l.y_row_stride = l.cols;
  }
  const int64_t segment = std::max<int64_t>(1, std::min(kSegment, l.cols));
  const int64_t segments = (l.cols + segment - 1) / segment;
  return {l, segment, segments, p.groups * p.features * l.rows * segments};
}

size_t minibatch_std_cpu_workspace_bytes(const MinibatchStdParams& p) {
  const int64_t entries = minibatch_std_cpu_plan(p).units + p.groups * p.features;
  return size_t(entries) *
         dispatch_dtype<CpuElements>(p.dtype, [](auto tag) { return sizeof(at::opmath_type<decltype(tag)>); });
}

void minibatch_std_cpu(const MinibatchStdParams& p) {
  static const auto kernel = GAN_KERNELS_CPU_KERNEL(minibatch_std_cpu_kernel);
  kernel(p, minibatch_std_cpu_plan(p));
}

}  // namespace gan_kernels
