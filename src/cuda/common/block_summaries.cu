#include <algorithm>
#include <cstdint>
#include <limits>

#include "cuda/common/block_summaries.cuh"
#include "cuda/common/check.hpp"

namespace flashmask::cuda {
namespace {

constexpr int kSummaryThreads = 128;
constexpr int kSummaryWarps = kSummaryThreads / kWarpSize;  // one summary per warp at a time

// One warp per summary, (batch, mask head, key block) in the output's order, over a 1-D grid
// (grid y and z stop at 65535, which a batch of many short sequences passes): warp w of the grid
// computes summaries w, w + warps in the grid, ... (warp_block_summary(): no shared memory, no
// barrier; was a CTA per summary merging through a shared-memory tree).
__global__ void __launch_bounds__(kSummaryThreads)
block_summaries_kernel(MaskView mask, int32_t block_n, int32_t blocks_per_row, int32_t mask_heads, int64_t summaries,
                       BlockSummary* out, const LaunchCondition condition) {
    if (!condition.sorted_order_possible()) return;
    const int64_t warps = int64_t(gridDim.x) * kSummaryWarps;
    for (int64_t index = int64_t(blockIdx.x) * kSummaryWarps + int64_t(threadIdx.x) / kWarpSize; index < summaries;
         index += warps) {
        const int32_t kv_block = int32_t(index % blocks_per_row);
        const int32_t head = int32_t(index / blocks_per_row % mask_heads);
        const int32_t batch = int32_t(index / blocks_per_row / mask_heads);
        const int64_t first = int64_t(kv_block) * block_n;
        const BlockSummary summary = warp_block_summary(mask, batch, head, first, min(first + block_n, int64_t(mask.nk)));
        if (threadIdx.x % kWarpSize == 0) out[index] = summary;
    }
}

}  // namespace

void compute_block_summaries(const MaskView& mask, int32_t batch, int32_t mask_heads, int32_t block_n,
                             BlockSummary* summaries, cudaStream_t stream, const LaunchCondition& condition) {
    const int32_t blocks_per_row = ceil_div(mask.nk, block_n);
    if (blocks_per_row == 0 || batch == 0 || mask_heads == 0) return;
    const int64_t count = int64_t(batch) * mask_heads * blocks_per_row;
    const unsigned ctas =
        unsigned(std::min<int64_t>(ceil_div(count, int64_t{kSummaryWarps}), std::numeric_limits<int32_t>::max()));
    block_summaries_kernel<<<ctas, kSummaryThreads, 0, stream>>>(mask, block_n, blocks_per_row, mask_heads, count,
                                                                 summaries, condition);
    check_launch("block_summaries_kernel");
}

}  // namespace flashmask::cuda
