// The kernel that sorts each (batch, head)'s blocks by work (tile_scheduler.cuh, tile_order.hpp).
#include <string>

#include "cuda/common/tile_scheduler.cuh"
#include "cuda/common/warp.hpp"

namespace flashmask::cuda {
namespace {

constexpr int kOrderThreads = 512;  // 16 warps, each counting one block's tiles at a time
constexpr int kOrderWarps = kOrderThreads / kWarpSize;
// The work of this many blocks is staged in shared memory (8 KB, 40 KB with the histogram) for
// the scatter, so that its one warp reads shared memory instead of waiting on global loads.
constexpr int kStagedBlocks = 2048;

// One CTA per (order batch, order head): a counting sort of its blocks by work bin, heaviest bin
// first, stable in the tie order, and this order head's part of the heavy prefix R.
//   1. work of each block (block_work()), one warp per block with its lanes over the other axis;
//      written to `work`, counted into a shared-memory histogram and added to the order head's
//      total work;
//   2. warp 0 turns the counts into each bin's first output position (bins above it come first);
//   3. in tie order, a chunk at a time, warp 0 places each block at its bin's next position:
//      __match_any_sync ranks lanes of one bin among themselves, so the sort stays stable. A
//      heavy block (heavy_work_threshold() of the total) placed at position p needs R >= p + 1;
//   4. warp 0 takes the largest such p + 1 into *heavy_ranks (atomicMax over the order CTAs; the
//      host zeroed it first).
__global__ void __launch_bounds__(kOrderThreads)
tile_order_kernel(const TileOrderShape shape, const SummaryTable summaries, int32_t* order, int32_t* work,
                  int32_t* heavy_ranks, unsigned long long* total_work) {
    __shared__ int32_t bins[kWorkBuckets];     // counts, then each bin's next output position
    __shared__ int32_t staged[kStagedBlocks];  // work of the current chunk's blocks, in tie order
    __shared__ unsigned long long order_head_work;  // the sum of the blocks' work

    const int32_t pair = int32_t(blockIdx.x);
    const int32_t order_batch = pair / shape.order_heads, order_head = pair % shape.order_heads;
    int32_t* const pair_order = order + int64_t(pair) * shape.blocks;
    int32_t* const pair_work = work + int64_t(pair) * shape.blocks;
    const int thread = int(threadIdx.x), warp = thread / kWarpSize, lane = thread % kWarpSize;
    const int32_t buckets = shape.buckets;

    for (int32_t bin = thread; bin < buckets; bin += kOrderThreads) bins[bin] = 0;
    if (thread == 0) order_head_work = 0;
    __syncthreads();

    // 1. Work per block.
    unsigned long long warp_work = 0;  // lane 0: the work of the blocks this warp counted
    for (int32_t block = warp; block < shape.blocks; block += kOrderWarps) {
        const int32_t part = block_work(shape, summaries.summaries, summaries.stride_batch, summaries.stride_mask_head,
                                        order_batch, order_head, block, lane, kWarpSize);
        const int32_t total = __reduce_add_sync(kFullWarpMask, part);
        if (lane == 0) {
            pair_work[block] = total;
            atomicAdd(&bins[total >> shape.bucket_shift], 1);
            warp_work += static_cast<unsigned long long>(total);
        }
    }
    if (lane == 0 && warp_work != 0) atomicAdd(&order_head_work, warp_work);
    __syncthreads();
    const double threshold = heavy_work_threshold(shape, int64_t(order_head_work));
    if (total_work != nullptr && thread == 0) atomicAdd(total_work, order_head_work);

    // 2. First output position of each bin. Lane l scans a run of bins from the heaviest down,
    // the lanes' totals are scanned across the warp, then each lane writes its run's positions.
    if (warp == 0) {
        const int32_t per_lane = ceil_div(buckets, kWarpSize);
        const int32_t begin = min(lane * per_lane, buckets), end = min(begin + per_lane, buckets);
        int32_t run_total = 0;
        for (int32_t down = begin; down < end; ++down) run_total += bins[buckets - 1 - down];
        int32_t inclusive = run_total;
        for (int offset = 1; offset < kWarpSize; offset *= 2) {
            const int32_t below = __shfl_up_sync(kFullWarpMask, inclusive, offset);
            if (lane >= offset) inclusive += below;
        }
        int32_t position = inclusive - run_total;
        for (int32_t down = begin; down < end; ++down) {
            const int32_t bin = buckets - 1 - down;
            const int32_t count = bins[bin];
            bins[bin] = position;
            position += count;
        }
    }

    // 3. Stable scatter in tie order.
    int32_t heavy_end = 0;  // 1 + the last position of a heavy block this lane placed
    for (int32_t chunk = 0; chunk < shape.blocks; chunk += kStagedBlocks) {
        const int32_t count = min(kStagedBlocks, shape.blocks - chunk);
        __syncthreads();  // the scan, or warp 0's placing of the previous chunk, is done
        for (int32_t i = thread; i < count; i += kOrderThreads)
            staged[i] = pair_work[tie_order_block(shape.axis, shape.blocks, chunk + i)];
        __syncthreads();
        if (warp != 0) continue;
        for (int32_t first = 0; first < count; first += kWarpSize) {
            const int32_t i = first + lane;
            const bool valid = i < count;
            const int32_t placed_work = valid ? staged[i] : 0;
            const int32_t bin = valid ? placed_work >> shape.bucket_shift : -1;  // -1: no block, never a real bin
            const unsigned peers = __match_any_sync(kFullWarpMask, bin);
            const int32_t rank = __popc(peers & ((1u << lane) - 1u));  // lanes of this bin before this one
            const int32_t position = valid ? bins[bin] + rank : 0;
            __syncwarp();  // every lane has read its bin's position before the lowest lane advances it
            if (valid && rank == 0) bins[bin] += __popc(peers);
            __syncwarp();
            if (valid) {
                pair_order[position] = tie_order_block(shape.axis, shape.blocks, chunk + i);
                if (is_heavy(placed_work, threshold)) heavy_end = max(heavy_end, position + 1);
            }
        }
    }

    // 4. This order head's heavy prefix.
    if (warp == 0) {
        heavy_end = __reduce_max_sync(kFullWarpMask, heavy_end);
        if (lane == 0 && heavy_end > 0) atomicMax(heavy_ranks, heavy_end);
    }
}

}  // namespace

void compute_tile_order(const TileOrderShape& shape, const SummaryTable& summaries, int32_t* order, int32_t* work,
                        int32_t* heavy_ranks, unsigned long long* total_work, cudaStream_t stream) {
    if (heavy_ranks == nullptr)
        throw Error(ErrorCode::InvalidArgument, "", "compute_tile_order: heavy_ranks is null, expected a device int32");
    // Zeroed on the stream (a graph node under capture): the kernel's CTAs only raise it.
    FM_CUDA_CHECK(cudaMemsetAsync(heavy_ranks, 0, sizeof(int32_t), stream));
    if (shape.order_pairs() == 0 || shape.blocks == 0) return;
    if (shape.buckets < 1 || shape.buckets > kWorkBuckets)
        throw Error(ErrorCode::InvalidArgument, "", "compute_tile_order: shape.buckets = " + std::to_string(shape.buckets) +
                                                        ", expected 1.." + std::to_string(kWorkBuckets));
    tile_order_kernel<<<unsigned(shape.order_pairs()), kOrderThreads, 0, stream>>>(shape, summaries, order, work,
                                                                                   heavy_ranks, total_work);
    check_launch("flashmask tile_order_kernel");
}

}  // namespace flashmask::cuda
