// The tile shapes of the portable (sm80+) forward kernel, one row per head dim, and the entry
// point that the explicit-instantiation units (src/cuda/instantiations/forward_sm80_*.cu) define.
// Every constant says why it has its value; change them here and nowhere else.
//
// Measured on an H100 80GB HBM3 (bf16, B = 2, H = 32, N = 8192, CLI median of 20-30, effective
// TFLOP/s; PyTorch SDPA's FlashAttention-2 backend on the same kind of card: D=64 296/279,
// D=128 354/333, D=256 331/313 full/causal). Tried and not kept, at D = 128:
//   kBlockN = 32:                         full 323 vs 330, causal 303 vs 305 (more barriers per key)
//   kBlockM = 64 (16 rows/warp, 4 CTAs/SM): full 294 vs 335, causal 284 vs 314 (K/V fragments
//                                          feed one mma instead of two: shared-memory bound)
//   K double-buffered (K(next) issued before S(n)): full 337 vs 335, masks 1-4 % slower
//   O rescale skipped when no row max changed (warp vote): full 330-335, masks 2-15 % slower
// and at D = 64 kBlockN = 128: full 298 vs 299, causal 278 vs 274 (no gain).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "flashmask/problem.hpp"

namespace flashmask::cuda::sm80 {

// Register budget per thread (255 at most): the O accumulator holds kMTiles * D / 2 floats and
// the S tile kMTiles * kBlockN / 2 floats; both live through the whole key loop. Register and
// spill figures below: -Xptxas -v, sm_90a, nvcc 13.0.
template <int kHeadDim> struct ForwardTileShape;

// D = 64: O 64 + S 64 floats per thread with 4 warps of 32 rows (228 registers, no spills).
template <> struct ForwardTileShape<64> {
    static constexpr int kWarps = 4;            // 128 threads
    static constexpr int kBlockM = 128;         // 32 rows (2 m16 tiles) per warp: each K/V fragment feeds 2 mma
    static constexpr int kBlockN = 64;          // 128 measured no faster (above)
    static constexpr int kMinBlocksPerSM = 2;   // caps registers at 255 (65536 / (128 * 2))
};

// D = 128: O 128 + S 64 floats per thread, the FlashAttention-2 shape for Hopper/Ampere
// (255 registers, 92 bytes of spills outside the mma sequences).
template <> struct ForwardTileShape<128> {
    static constexpr int kWarps = 4;            // 128 threads
    static constexpr int kBlockM = 128;         // 32 rows (2 m16 tiles) per warp; 64 measured 12 % slower
    static constexpr int kBlockN = 64;          // 128 would not fit the registers; 32 measured slower
    static constexpr int kMinBlocksPerSM = 2;   // 2 x 65 KB shared memory and 2 x 32K registers per SM
};

// D = 256: O alone is 128 floats per thread at 16 rows per warp, so the rows are spread over
// 8 warps (one m16 tile each) to leave room for S (250 registers, no spills).
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
    static constexpr int kColSplits = 1;                              // one CTA writes all of O's columns
    static_assert(kWarpRows % 16 == 0, "each warp owns whole m16 tiles");
    static_assert(kWarpRows <= 32, "a partial tile's masked rows of one warp fit one 32-bit word per column");
    static_assert(Shape::kBlockN % 16 == 0 && kHeadDim % 16 == 0, "k16 steps of the two products");
    static_assert(Shape::kBlockN <= kThreads, "one thread per column fills the partial-tile mask");
};

// What launch_forward() queues: the whole forward, or only the per-call preprocessing before its
// kernel (block summaries, tile order, and from 16K keys the key order's sort and comparison),
// which reads nothing but the mask (cuda::forward_preprocessing(), a benchmark hook).
enum class ForwardPart { Attention, PreprocessingOnly };

// Writes p.out and p.lse for one (dtype, head dim): builds the block summaries at kBlockN
// granularity on `stream` and launches the kernel there. Defined in forward_kernel.cuh,
// instantiated once per (Element, kHeadDim) in src/cuda/instantiations/.
template <typename Element, int kHeadDim>
void launch_forward(const AttentionProblem& p, KeyOrder key_order, cudaStream_t stream,
                    ForwardPart part = ForwardPart::Attention);

}  // namespace flashmask::cuda::sm80
