#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace gan_kernels {

// A tensor [N, ...] whose sample i is the i-th block of per_sample consecutive elements in memory.
struct SampleView {
  int64_t samples;
  int64_t per_sample;
};

// Forward (`grad` undefined): out[i] = (||g_i|| - center)^2, or exactly sum(g_i^2) when center == 0,
// in the accumulator type (float for fp16/bf16). Backward (`grad` = dL/dout, [N], accumulator type):
// out = dL/dg, laid out like g. Needs view.per_sample > 0.
// At ||g_i|| = 0 with center != 0 the gradient is undefined; the kernels return 0 there, as
// torch.linalg.vector_norm's backward does.
void gradient_penalty_cpu(at::Tensor& out, const at::Tensor& g, const at::Tensor& grad, SampleView view,
                          double center);

}  // namespace gan_kernels
