// The kernel that sorts each (batch, head)'s blocks by work (tile_scheduler.cuh, tile_order.hpp).
#include <cstddef>
#include <string>

#include "cuda/common/tile_scheduler.cuh"
#include "cuda/common/warp.hpp"

namespace flashmask::cuda {
namespace {

constexpr int kOrderThreads = 512;  // 16 warps, each counting one block's tiles at a time
constexpr int kOrderWarps = kOrderThreads / kWarpSize;
// Step 1 runs on several CTAs per order pair, each counting this many blocks (one per warp).
// With one CTA per pair it was latency-bound: 81 us of share_question's 1.74 ms forward at 32K
// (B = 1, one mask head: one CTA on one SM for 256 x 512 tiles; torch.profiler, bench/NOTES.md).
constexpr int kBlocksPerCountingCta = kOrderWarps;
// The work of this many blocks is staged in shared memory (8 KB, 40 KB with the histogram) for
// the scatter, so that its one warp reads shared memory instead of waiting on global loads.
constexpr int kStagedBlocks = 2048;

// ceil(blocks / kBlocksPerCountingCta) CTAs per (order batch, order head), 1-D grid pair-major.
// Each CTA counts its blocks' work; the last of a pair to finish (an arrival count per pair,
// zeroed by the host) sorts the pair's blocks: a counting sort by work bin, heaviest bin first,
// stable in the tie order, and this order head's part of the heavy prefix R.
//   1. work of each block (block_work()), one warp per block with its lanes over the other axis,
//      written to `work`; the last CTA reads them back (from L2: other CTAs wrote them), counts
//      them into a shared-memory histogram and adds them to the order head's total work;
//   2. warp 0 turns the counts into each bin's first output position (bins above it come first);
//   3. in tie order, a chunk at a time, warp 0 places each block at its bin's next position:
//      __match_any_sync ranks lanes of one bin among themselves, so the sort stays stable. A
//      heavy block (heavy_work_threshold() of the total) placed at position p needs R >= p + 1;
//   4. warp 0 takes the largest such p + 1 into counters[0] (atomicMax over the order pairs).
// counters: [R, arrivals of each order pair], zeroed by the host.
__global__ void __launch_bounds__(kOrderThreads)
tile_order_kernel(const TileOrderShape shape, const SummaryTable summaries, int32_t* order, int32_t* work,
                  int32_t* counters, unsigned long long* total_work) {
    __shared__ int32_t bins[kWorkBuckets];     // counts, then each bin's next output position
    __shared__ int32_t staged[kStagedBlocks];  // work of the current chunk's blocks, in tie order
    __shared__ unsigned long long order_head_work;  // the sum of the blocks' work
    __shared__ bool last_to_arrive;

    const int32_t ctas_per_pair = ceil_div(shape.blocks, kBlocksPerCountingCta);
    const int32_t pair = int32_t(blockIdx.x) / ctas_per_pair;
    const int32_t first_block = int32_t(blockIdx.x) % ctas_per_pair * kBlocksPerCountingCta;
    const int32_t order_batch = pair / shape.order_heads, order_head = pair % shape.order_heads;
    int32_t* const pair_order = order + int64_t(pair) * shape.blocks;
    int32_t* const pair_work = work + int64_t(pair) * shape.blocks;
    const int thread = int(threadIdx.x), warp = thread / kWarpSize, lane = thread % kWarpSize;
    const int32_t buckets = shape.buckets;

    // 1. Work of this CTA's blocks.
    const int32_t block = first_block + warp;
    if (block < shape.blocks) {
        const int32_t part = block_work(shape, summaries.summaries, summaries.stride_batch, summaries.stride_mask_head,
                                        order_batch, order_head, block, lane, kWarpSize);
        const int32_t total = __reduce_add_sync(kFullWarpMask, part);
        if (lane == 0) pair_work[block] = total;
    }
    // The last CTA of the pair to arrive sees every CTA's work: each made its writes visible
    // device-wide before it counted itself in.
    __threadfence();
    __syncthreads();
    if (thread == 0) last_to_arrive = atomicAdd(&counters[1 + pair], 1) == ctas_per_pair - 1;
    __syncthreads();
    if (!last_to_arrive) return;
    __threadfence();

    for (int32_t bin = thread; bin < buckets; bin += kOrderThreads) bins[bin] = 0;
    if (thread == 0) order_head_work = 0;
    __syncthreads();
    unsigned long long thread_work = 0;
    for (int32_t i = thread; i < shape.blocks; i += kOrderThreads) {
        const int32_t block_total = __ldcg(pair_work + i);
        atomicAdd(&bins[block_total >> shape.bucket_shift], 1);
        thread_work += static_cast<unsigned long long>(block_total);
    }
    if (thread_work != 0) atomicAdd(&order_head_work, thread_work);
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
            staged[i] = __ldcg(pair_work + tie_order_block(shape.axis, shape.blocks, chunk + i));
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
        if (lane == 0 && heavy_end > 0) atomicMax(&counters[0], heavy_end);
    }
}

}  // namespace

void compute_tile_order(const TileOrderShape& shape, const SummaryTable& summaries, int32_t* order, int32_t* work,
                        int32_t* counters, unsigned long long* total_work, cudaStream_t stream) {
    if (counters == nullptr)
        throw Error(ErrorCode::InvalidArgument, "",
                    "compute_tile_order: counters is null, expected tile_order_counters(shape) device int32s");
    // Zeroed on the stream (a graph node under capture): the kernel's CTAs only raise them.
    FM_CUDA_CHECK(cudaMemsetAsync(counters, 0, sizeof(int32_t) * std::size_t(tile_order_counters(shape)), stream));
    if (shape.order_pairs() == 0 || shape.blocks == 0) return;
    if (shape.buckets < 1 || shape.buckets > kWorkBuckets)
        throw Error(ErrorCode::InvalidArgument, "", "compute_tile_order: shape.buckets = " + std::to_string(shape.buckets) +
                                                        ", expected 1.." + std::to_string(kWorkBuckets));
    // At most shape.ctas() (order pairs <= batch x heads), which make_tile_order_shape() keeps
    // within the grid's 2^31 - 1.
    const int64_t ctas = shape.order_pairs() * ceil_div(shape.blocks, kBlocksPerCountingCta);
    tile_order_kernel<<<unsigned(ctas), kOrderThreads, 0, stream>>>(shape, summaries, order, work, counters, total_work);
    check_launch("flashmask tile_order_kernel");
}

}  // namespace flashmask::cuda
