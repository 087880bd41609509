// Which kernel variants this build holds. Each generated instantiation file registers its
// launcher at load time, so the module serves exactly what was compiled (a CI build holds a
// subset) and says so instead of failing at link time.
#pragma once

#include <cuda_runtime.h>

#include <map>
#include <tuple>

#include "params.h"

namespace jfa {

enum class Direction : int { kFwd = 0, kJvp = 1, kBwd = 2 };
enum class DType : int { kF16 = 0, kBF16 = 1 };

using LaunchFn = void (*)(const AttnParams&, cudaStream_t);
using VariantKey = std::tuple<int, int, int, int>;  // direction, dtype, head_dim_qk, head_dim_v

std::map<VariantKey, LaunchFn>& registry();

struct Register {
    Register(Direction dir, DType dt, int dqk, int dv, LaunchFn fn) {
        registry()[VariantKey{static_cast<int>(dir), static_cast<int>(dt), dqk, dv}] = fn;
    }
};

}  // namespace jfa
