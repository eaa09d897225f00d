#include <algorithm>
#include <cstdint>
#include <limits>

#include "cuda/common/block_summaries.cuh"
#include "cuda/common/check.hpp"

namespace flashmask::cuda {
namespace {

constexpr int kSummaryThreads = 128;  // one block summary per CTA; columns strided over threads

// One CTA per summary, (batch, mask head, key block) in the output's order, over a 1-D grid
// (grid y and z stop at 65535, which a batch of many short sequences passes): CTA c computes
// summaries c, c + gridDim.x, ... Each thread folds a strided subset of the block's columns,
// then a shared-memory tree merges the partial summaries.
__global__ void block_summaries_kernel(MaskView mask, int32_t block_n, int32_t blocks_per_row, int32_t mask_heads,
                                       int64_t summaries, BlockSummary* out) {
    __shared__ BlockSummary shared[kSummaryThreads];
    for (int64_t index = blockIdx.x; index < summaries; index += gridDim.x) {
        const int32_t kv_block = int32_t(index % blocks_per_row);
        const int32_t head = int32_t(index / blocks_per_row % mask_heads);
        const int32_t batch = int32_t(index / blocks_per_row / mask_heads);
        // Columns in int64: with Nk near 2^31, first + block_n and j + kSummaryThreads overflow
        // int32 (j would wrap negative, pass j < end and read before the tensor).
        const int64_t first = int64_t(kv_block) * block_n;
        const int64_t end = min(first + block_n, int64_t(mask.nk));
        BlockSummary partial = BlockSummary::empty();
        for (int64_t j = first + threadIdx.x; j < end; j += kSummaryThreads)
            partial.fold(column_intervals(mask, batch, head, int32_t(j)));

        shared[threadIdx.x] = partial;
        __syncthreads();
        for (int stride = kSummaryThreads / 2; stride > 0; stride /= 2) {
            if (int(threadIdx.x) < stride) shared[threadIdx.x].merge(shared[threadIdx.x + stride]);
            __syncthreads();
        }
        if (threadIdx.x == 0) out[index] = shared[0];
        __syncthreads();  // shared[0] is read before the next summary overwrites it
    }
}

}  // namespace

void compute_block_summaries(const MaskView& mask, int32_t batch, int32_t mask_heads, int32_t block_n,
                             BlockSummary* summaries, cudaStream_t stream) {
    const int32_t blocks_per_row = ceil_div(mask.nk, block_n);
    if (blocks_per_row == 0 || batch == 0 || mask_heads == 0) return;
    const int64_t count = int64_t(batch) * mask_heads * blocks_per_row;
    const unsigned ctas = unsigned(std::min<int64_t>(count, std::numeric_limits<int32_t>::max()));
    block_summaries_kernel<<<ctas, kSummaryThreads, 0, stream>>>(mask, block_n, blocks_per_row, mask_heads, count,
                                                                 summaries);
    check_launch("block_summaries_kernel");
}

}  // namespace flashmask::cuda
