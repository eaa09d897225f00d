// The warp's shape, one definition for every kernel (common, sm80) and the GPU tests' reference.
// Plain constexpr values: host code may size launches with them too.
#pragma once

namespace flashmask::cuda {

constexpr int kWarpSize = 32;                    // lanes per warp on every NVIDIA architecture so far
constexpr unsigned kFullWarpMask = 0xffffffffu;  // all kWarpSize lanes, for the *_sync intrinsics

static_assert(kWarpSize == 8 * sizeof(kFullWarpMask), "the full-warp mask holds one bit per lane");

}  // namespace flashmask::cuda
