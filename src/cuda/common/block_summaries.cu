#include "cuda/common/block_summaries.cuh"
#include "cuda/common/check.hpp"

namespace flashmask::cuda {
namespace {

constexpr int kSummaryThreads = 128;  // one block summary per CTA; columns strided over threads

// One CTA per (key block, mask head, batch): each thread folds a strided subset of the block's
// columns, then a shared-memory tree merges the partial summaries.
__global__ void block_summaries_kernel(MaskView mask, int32_t block_n, int32_t blocks_per_row, BlockSummary* out) {
    const int32_t kv_block = blockIdx.x, head = blockIdx.y, batch = blockIdx.z;
    // Columns in int64: with Nk near 2^31, first + block_n and j + kSummaryThreads overflow int32
    // (j would wrap negative, pass j < end and read before the tensor).
    const int64_t first = int64_t(kv_block) * block_n;
    const int64_t end = min(first + block_n, int64_t(mask.nk));
    BlockSummary partial = BlockSummary::empty();
    for (int64_t j = first + threadIdx.x; j < end; j += kSummaryThreads)
        partial.fold(column_intervals(mask, batch, head, int32_t(j)));

    __shared__ BlockSummary shared[kSummaryThreads];
    shared[threadIdx.x] = partial;
    __syncthreads();
    for (int stride = kSummaryThreads / 2; stride > 0; stride /= 2) {
        if (int(threadIdx.x) < stride) shared[threadIdx.x].merge(shared[threadIdx.x + stride]);
        __syncthreads();
    }
    if (threadIdx.x == 0) out[(int64_t(batch) * gridDim.y + head) * blocks_per_row + kv_block] = shared[0];
}

}  // namespace

void compute_block_summaries(const MaskView& mask, int32_t batch, int32_t mask_heads, int32_t block_n,
                             BlockSummary* summaries, cudaStream_t stream) {
    const int32_t blocks_per_row = ceil_div(mask.nk, block_n);
    if (blocks_per_row == 0 || batch == 0 || mask_heads == 0) return;
    const dim3 grid(blocks_per_row, mask_heads, batch);
    block_summaries_kernel<<<grid, kSummaryThreads, 0, stream>>>(mask, block_n, blocks_per_row, summaries);
    check_launch("block_summaries_kernel");
}

}  // namespace flashmask::cuda
