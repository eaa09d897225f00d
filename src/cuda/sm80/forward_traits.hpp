// The tile shapes of the portable (sm80+) forward kernel, one row per head dim, and the entry
// point that the explicit-instantiation units (src/cuda/instantiations/forward_sm80_*.cu) define.
// Every constant says why it has its value; change them here and nowhere else.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "flashmask/problem.hpp"

namespace flashmask::cuda::sm80 {

// Register budget per thread (255 at most): the O accumulator holds kMTiles * D / 2 floats and
// the S tile kMTiles * kBlockN / 2 floats; both live through the whole key loop.
template <int kHeadDim> struct ForwardTileShape;

// D = 64: O 64 + S 64 floats per thread with 4 warps of 32 rows. kBlockN = 64 keeps the
// partial-tile column cache and the key loop granularity the same as D = 128.
template <> struct ForwardTileShape<64> {
    static constexpr int kWarps = 4;            // 128 threads: 4 CTAs/SM by registers
    static constexpr int kBlockM = 128;         // 32 rows (2 m16 tiles) per warp: each K/V fragment feeds 2 mma
    static constexpr int kBlockN = 64;          // S tile of 64 floats/thread
    static constexpr int kMinBlocksPerSM = 2;   // caps registers at 255 (65536 / (128 * 2))
};

// D = 128: O 128 + S 64 floats per thread, the FlashAttention-2 shape for Hopper/Ampere.
template <> struct ForwardTileShape<128> {
    static constexpr int kWarps = 4;            // 128 threads
    static constexpr int kBlockM = 128;         // 32 rows (2 m16 tiles) per warp
    static constexpr int kBlockN = 64;          // 128 + 64 accumulators fit 255 registers; 128 would not
    static constexpr int kMinBlocksPerSM = 2;   // 2 x 64 KB shared memory and 2 x 32K registers per SM
};

// D = 256: O alone is 128 floats per thread at 16 rows per warp, so the rows are spread over
// 8 warps (one m16 tile each) to leave room for S.
template <> struct ForwardTileShape<256> {
    static constexpr int kWarps = 8;            // 256 threads
    static constexpr int kBlockM = 128;         // 16 rows (1 m16 tile) per warp
    static constexpr int kBlockN = 64;          // S 32 floats/thread; 128 KB of Q + K + V shared memory
    static constexpr int kMinBlocksPerSM = 1;   // 256 threads x 255 registers, 130 KB shared memory
};

template <int kHeadDim_>
struct ForwardTraits : ForwardTileShape<kHeadDim_> {
    using Shape = ForwardTileShape<kHeadDim_>;
    static constexpr int kHeadDim = kHeadDim_;
    static constexpr int kThreads = Shape::kWarps * 32;
    static constexpr int kWarpRows = Shape::kBlockM / Shape::kWarps;  // query rows owned by one warp
    static constexpr int kMTiles = kWarpRows / 16;                    // m16 tiles per warp
    static constexpr int kNTiles = Shape::kBlockN / 8;                // n8 tiles of S per warp
    static constexpr int kDTiles = kHeadDim / 8;                      // n8 tiles of O per warp
    static_assert(kWarpRows % 16 == 0, "each warp owns whole m16 tiles");
    static_assert(Shape::kBlockN % 16 == 0 && kHeadDim % 16 == 0, "k16 steps of the two products");
};

// Writes p.out and p.lse for one (dtype, head dim): builds the block summaries at kBlockN
// granularity on `stream` and launches the kernel there. Defined in forward_kernel.cuh,
// instantiated once per (Element, kHeadDim) in src/cuda/instantiations/.
template <typename Element, int kHeadDim>
void launch_forward(const AttentionProblem& p, cudaStream_t stream);

}  // namespace flashmask::cuda::sm80
