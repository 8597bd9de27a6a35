// From a kernel's runtime mode to the template argument its kernels are instantiated with.
#pragma once

#include <type_traits>
#include <utility>

namespace gan_kernels {

// Calls f(std::integral_constant<Mode, mode>{}). Mode is an enum class whose modes are numbered from
// 0 and whose last enumerator, Count, is not a mode: a mode added to the enum is dispatched as well.
template <typename Mode, int kIndex = 0, typename F> decltype(auto) dispatch_mode(Mode mode, F&& f) {
  constexpr Mode kMode = static_cast<Mode>(kIndex);
  if constexpr (kIndex + 1 == static_cast<int>(Mode::Count)) {
    return f(std::integral_constant<Mode, kMode>{});  // every other mode is ruled out
  } else {
    if (mode == kMode) return f(std::integral_constant<Mode, kMode>{});
    return dispatch_mode<Mode, kIndex + 1>(mode, std::forward<F>(f));
  }
}

}  // namespace gan_kernels
