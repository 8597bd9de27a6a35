// The CUDA emulation build's half type: c10::Half, which rounds float to nearest even as
// __float2half_rn does.
#pragma once

#include <c10/util/Half.h>

using __half = c10::Half;
inline float __half2float(__half h) { return static_cast<float>(h); }
inline __half __float2half_rn(float f) { return __half(f); }
