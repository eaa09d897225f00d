// Block summaries on the device: per (batch, mask head, key block) minima and maxima of the
// canonical column intervals, O(B * Hm * Nk), computed once per call by every CUDA path.
#pragma once

#include <cuda_runtime.h>

#include "flashmask/tiles.hpp"

namespace flashmask::cuda {

// summaries: [batch, mask_heads, ceil(Nk / block_n)], device memory.
void compute_block_summaries(const MaskView& mask, int32_t batch, int32_t mask_heads, int32_t block_n,
                             BlockSummary* summaries, cudaStream_t stream);

}  // namespace flashmask::cuda
