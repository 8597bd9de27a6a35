// The element types a torch-free launcher accepts; shared by the torch glue and the kernels.
#pragma once

namespace gan_kernels {

enum class DType { Float32, Float64, Float16, BFloat16 };

}  // namespace gan_kernels
