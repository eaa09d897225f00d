// Block summaries on the device: per (batch, mask head, key block) minima and maxima of the
// canonical column intervals, O(B * Hm * Nk), computed once per call by every CUDA path.
#pragma once

#include <cuda_runtime.h>

#include "cuda/common/key_order_choice.hpp"
#include "cuda/common/warp.hpp"
#include "flashmask/tiles.hpp"

namespace flashmask::cuda {

#if defined(__CUDACC__)
// The summary of columns [first, end) of (batch, mask head), folded by one warp: lane l takes
// columns first + l, first + l + 32, ... (coalesced reads of the index tensor), then the lanes'
// partial summaries merge by shuffles, so every lane returns the block's summary. Columns in
// int64: with Nk near 2^31, j + kWarpSize would pass INT32_MAX. Every lane must call it.
__device__ __forceinline__ BlockSummary warp_block_summary(const MaskView& mask, int32_t batch, int32_t head,
                                                           int64_t first, int64_t end) {
    BlockSummary summary = BlockSummary::empty();
    for (int64_t j = first + int64_t(threadIdx.x) % kWarpSize; j < end; j += kWarpSize)
        summary.fold(column_intervals(mask, batch, head, int32_t(j)));
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
        BlockSummary other;
        other.min_lower_start = __shfl_xor_sync(kFullWarpMask, summary.min_lower_start, offset);
        other.max_lower_start = __shfl_xor_sync(kFullWarpMask, summary.max_lower_start, offset);
        other.min_lower_end = __shfl_xor_sync(kFullWarpMask, summary.min_lower_end, offset);
        other.max_lower_end = __shfl_xor_sync(kFullWarpMask, summary.max_lower_end, offset);
        other.min_upper_start = __shfl_xor_sync(kFullWarpMask, summary.min_upper_start, offset);
        other.max_upper_start = __shfl_xor_sync(kFullWarpMask, summary.max_upper_start, offset);
        other.min_upper_end = __shfl_xor_sync(kFullWarpMask, summary.min_upper_end, offset);
        other.max_upper_end = __shfl_xor_sync(kFullWarpMask, summary.max_upper_end, offset);
        summary.merge(other);
    }
    return summary;
}
#endif

// summaries: [batch, mask_heads, ceil(Nk / block_n)], device memory. Every CTA returns at once
// unless condition.sorted_order_possible() (the sorted order's summaries, under Automatic).
void compute_block_summaries(const MaskView& mask, int32_t batch, int32_t mask_heads, int32_t block_n,
                             BlockSummary* summaries, cudaStream_t stream, const LaunchCondition& condition = {});

}  // namespace flashmask::cuda
