// The kernel that sorts each (batch, head)'s blocks by work (tile_scheduler.cuh, tile_order.hpp).
#include <cstddef>
#include <string>

#include "cuda/common/block_summaries.cuh"
#include "cuda/common/tile_scheduler.cuh"
#include "cuda/common/warp.hpp"

namespace flashmask::cuda {
namespace {

constexpr int kOrderWarps = kOrderKeyBlocksPerCta;  // one key block per warp in step 1 (tile_order.hpp)
constexpr int kOrderThreads = kOrderWarps * kWarpSize;
// Resident CTAs per SM the registers are budgeted for: 2 x 512 threads leave 64 registers a
// thread. ptxas's own choice (40, for 3 CTAs) spilled the summaries' fold; the kernel is a
// chain of latencies over a few CTAs per pair, where occupancy buys little.
constexpr int kOrderCtasPerSm = 2;

// One warp per key block (a warp folds a block's columns when the kernel computes the summaries
// too), and at least one CTA per pair: without keys (Nk = 0) the query blocks still get their
// order, every one with work 0.
FM_HOST_DEVICE int32_t order_ctas_per_pair(const TileOrderShape& shape) {
    return shape.key_blocks > 0 ? ceil_div(shape.key_blocks, int32_t(kOrderWarps)) : 1;
}
// The work of this many blocks is staged in shared memory (8 KB, 40 KB with the histogram) for
// the scatter, so that its one warp reads shared memory instead of waiting on global loads; in
// step 1b the same buffer holds a key window's difference array.
constexpr int kStagedBlocks = kOrderStagedInts;

// Inclusive prefix sum over the CTA's threads, in thread order; `block_total` gets the sum of
// all. warp_totals: kOrderWarps shared ints. Every thread must call it.
__device__ __forceinline__ int32_t cta_inclusive_scan(int32_t value, int32_t* warp_totals, int32_t& block_total) {
    const int thread = int(threadIdx.x), warp = thread / kWarpSize, lane = thread % kWarpSize;
    int32_t inclusive = value;
    for (int offset = 1; offset < kWarpSize; offset *= 2) {
        const int32_t below = __shfl_up_sync(kFullWarpMask, inclusive, offset);
        if (lane >= offset) inclusive += below;
    }
    __syncthreads();  // warp_totals' previous use is over
    if (lane == kWarpSize - 1) warp_totals[warp] = inclusive;
    __syncthreads();
    int32_t before = 0;
    for (int w = 0; w < warp; ++w) before += warp_totals[w];
    block_total = 0;
    for (int w = 0; w < kOrderWarps; ++w) block_total += warp_totals[w];
    return before + inclusive;
}

// Step 1b: this thread's part of the least tiles of the CTA's key windows
// (host_least_window_tiles(), tile_order.hpp, whose loops these are): `skipping`, query blocks + 1
// ints of shared memory, is each window's difference array, filled one key per thread and
// scanned by the whole CTA. Only where window_bound_fits(); every thread must call it.
__device__ unsigned long long cta_least_window_tiles(const TileOrderShape& shape, const MaskView& mask,
                                                     int32_t block_n, int32_t order_batch, int32_t order_head,
                                                     int64_t cta_first_key, int32_t* skipping, int32_t* warp_totals) {
    const int32_t query_blocks = shape.query_blocks();
    const int thread = int(threadIdx.x);
    const int64_t cta_end_key = min(cta_first_key + int64_t(kOrderWarps) * block_n, int64_t(mask.nk));
    unsigned long long tiles = 0;
    for_each_order_mask_head(shape, order_head, [&](int32_t mask_head, int32_t heads) {
        for (int64_t first = cta_first_key; first < cta_end_key; first += kKeyOrderWindow) {
            const int64_t end = min(first + int64_t(kKeyOrderWindow), cta_end_key);
            for (int32_t qb = thread; qb <= query_blocks; qb += kOrderThreads) skipping[qb] = 0;
            __syncthreads();
            for (int64_t j = first + thread; j < end; j += kOrderThreads) {
                const SkippedQueryBlocks runs = key_skipped_query_blocks(
                    column_intervals(mask, order_batch, mask_head, int32_t(j)), shape.block_m, shape.nq, query_blocks);
                for (const BlockRun& run : {runs.first, runs.second}) {
                    if (run.empty()) continue;
                    atomicAdd(skipping + run.begin, 1);
                    atomicAdd(skipping + run.end, -1);
                }
            }
            __syncthreads();
            int32_t skipped_before = 0;
            for (int32_t chunk = 0; chunk < query_blocks; chunk += kOrderThreads) {  // uniform trip count
                const int32_t qb = chunk + thread;
                int32_t chunk_sum = 0;
                const int32_t skipped_keys =
                    skipped_before + cta_inclusive_scan(qb < query_blocks ? skipping[qb] : 0, warp_totals, chunk_sum);
                skipped_before += chunk_sum;
                if (qb < query_blocks)
                    tiles += static_cast<unsigned long long>(heads) *
                             static_cast<unsigned long long>(ceil_div(int32_t(end - first) - skipped_keys, block_n));
            }
            __syncthreads();  // the scan has read `skipping` before the next window zeroes it
        }
    });
    return tiles;
}

// ceil(key blocks / kOrderWarps) CTAs per (order batch, order head), 1-D grid pair-major. Each
// CTA handles kOrderWarps key blocks, one per warp; the last CTA of a pair to finish (an arrival
// count per pair, zeroed by the host) turns that into the pair's work and sorts the pair's
// blocks: a counting sort by work bin, heaviest bin first, stable in the tie order, and this
// order head's part of the heavy prefix R.
//   0. with `computed_summaries` (query-block axis, summaries of exactly the order pairs' rows):
//      the warp folds its key block's columns into the summary and writes it to the table, which
//      the attention kernel then reads; the forward's preprocessing is then this one launch and
//      its memset (was three: summaries, memset, order). Otherwise it reads the table;
//   1. the query blocks its key block skips (skipped_query_blocks(), at most two runs, O(1)):
//      - key-block axis: the block's work (block_work()), written to `work`;
//      - query-block axis: -1 at each run's first query block and +1 after its last, added into
//        `work` (zeroed by the host), a difference array whose prefix sums count the key blocks
//        that skip each query block. Was one classify() per tile (256 x 512 at 32K) on warps of
//        a few CTAs: 23 us of share_question's 1.73 ms forward at 32K, 81 us on one CTA per pair
//        (torch.profiler on an H100, bench/NOTES.md);
//   2. the last CTA reads them back (from L2: other CTAs wrote them), for the query-block axis
//      takes the prefix sums (work = key blocks - skipping ones) and writes the work, counts it
//      into a shared-memory histogram and adds it to the order head's total work;
//   3. warp 0 turns the counts into each bin's first output position (bins above it come first);
//   4. in tie order, a chunk at a time, warp 0 places each block at its bin's next position:
//      __match_any_sync ranks lanes of one bin among themselves, so the sort stays stable. A
//      heavy block (heavy_work_threshold() of the total) placed at position p needs R >= p + 1;
//   5. warp 0 takes the largest such p + 1 into R (atomicMax over the order pairs).
//   1b. with totals.least_pairs (KeyOrder::Automatic's bound, sorted_order_may_pay()): the least
//      tiles of the CTA's key windows times block_m x block_n (cta_least_window_tiles()), or,
//      where window_bound_fits() does not hold, the visible pairs of the warp's key block's
//      columns; either once for each query head whose tiles the pair counts. With
//      totals.tile_pairs, step 2 also adds the pair's tiles times block_m x block_n.
// Every CTA returns at once unless condition.sorted_order_possible().
// workspace: tile_order_workspace(shape) int32s, zeroed by the host: work, R, arrivals.
__global__ void __launch_bounds__(kOrderThreads, kOrderCtasPerSm)
tile_order_kernel(const TileOrderShape shape, const SummaryTable summaries, const MaskView mask,
                  BlockSummary* computed_summaries, int32_t* order, int32_t* workspace, const OrderTotals totals,
                  const LaunchCondition condition) {
    if (!condition.sorted_order_possible()) return;
    __shared__ int32_t bins[kWorkBuckets];     // counts, then each bin's next output position
    __shared__ int32_t staged[kStagedBlocks];  // work of the current chunk's blocks, in tie order
    __shared__ int32_t warp_totals[kOrderWarps];
    __shared__ unsigned long long order_head_work;  // the sum of the blocks' work
    __shared__ bool last_to_arrive;

    const int32_t ctas_per_pair = order_ctas_per_pair(shape);
    const int32_t pair = int32_t(blockIdx.x) / ctas_per_pair;
    const int32_t key_block = int32_t(blockIdx.x) % ctas_per_pair * kOrderWarps + int32_t(threadIdx.x) / kWarpSize;
    const int32_t order_batch = pair / shape.order_heads, order_head = pair % shape.order_heads;
    int32_t* const pair_order = order + int64_t(pair) * shape.blocks;
    int32_t* const pair_work = workspace + int64_t(pair) * shape.blocks;
    int32_t* const heavy_ranks = tile_order_heavy_ranks(shape, workspace);
    int32_t* const arrivals = heavy_ranks + 1;
    const int thread = int(threadIdx.x), warp = thread / kWarpSize, lane = thread % kWarpSize;
    const int32_t buckets = shape.buckets;
    const bool query_axis = shape.axis == TileAxis::QueryBlocks;
    const unsigned long long pairs_per_tile =
        static_cast<unsigned long long>(shape.block_m) * static_cast<unsigned long long>(summaries.block_n);

    // 0-1. This warp's key block.
    if (key_block < shape.key_blocks) {
        const int64_t row = order_batch * summaries.stride_batch + order_head * summaries.stride_mask_head;
        if (query_axis) {
            BlockSummary summary;
            if (computed_summaries != nullptr) {  // order heads are mask heads, order batches batches
                const int64_t first = int64_t(key_block) * summaries.block_n;
                summary = warp_block_summary(mask, order_batch, order_head, first,
                                             min(first + summaries.block_n, int64_t(mask.nk)));
                if (lane == 0) computed_summaries[row + key_block] = summary;
            } else {
                summary = summaries.summaries[row + key_block];
            }
            if (lane == 0) {
                const SkippedQueryBlocks skipped = skipped_query_blocks(summary, shape.block_m, shape.nq, shape.blocks);
                auto add_run = [&](const BlockRun& run) {
                    if (run.empty()) return;
                    atomicAdd(pair_work + run.begin, -1);
                    if (run.end < shape.blocks) atomicAdd(pair_work + run.end, 1);
                };
                add_run(skipped.first);
                add_run(skipped.second);
            }
        } else if (lane == 0) {
            pair_work[key_block] = block_work(shape, summaries.summaries, summaries.stride_batch,
                                              summaries.stride_mask_head, order_batch, order_head, key_block);
        }
    }
    // 1b. KeyOrder::Automatic's least pairs.
    if (totals.least_pairs != nullptr) {
        unsigned long long least = 0;  // this thread's part
        if (window_bound_fits(shape, summaries.block_n)) {
            const int64_t cta_first_key =
                int64_t(int32_t(blockIdx.x) % ctas_per_pair) * kOrderWarps * int64_t(summaries.block_n);
            least = pairs_per_tile * cta_least_window_tiles(shape, totals.mask, summaries.block_n, order_batch,
                                                            order_head, cta_first_key, staged, warp_totals);
        } else if (key_block < shape.key_blocks) {
            const int64_t first = int64_t(key_block) * summaries.block_n;
            const int64_t end = min(first + summaries.block_n, int64_t(totals.mask.nk));
            least = order_visible_pairs(shape, totals.mask, order_batch, order_head, first + lane, end, kWarpSize);
        }
        for (int offset = kWarpSize / 2; offset > 0; offset /= 2) least += __shfl_down_sync(kFullWarpMask, least, offset);
        if (lane == 0 && least != 0) atomicAdd(totals.least_pairs, least);
    }
    // The last CTA of the pair to arrive sees every CTA's part: each made its writes visible
    // device-wide before it counted itself in.
    __threadfence();
    __syncthreads();
    if (thread == 0) last_to_arrive = atomicAdd(&arrivals[pair], 1) == ctas_per_pair - 1;
    __syncthreads();
    if (!last_to_arrive) return;
    __threadfence();

    // 2. Work of every block: histogram and total.
    for (int32_t bin = thread; bin < buckets; bin += kOrderThreads) bins[bin] = 0;
    if (thread == 0) order_head_work = 0;
    __syncthreads();
    const bool single_chunk = shape.blocks <= kStagedBlocks;
    unsigned long long thread_work = 0;
    int32_t skipping_before = 0;  // query-block axis: the difference array's sum before this chunk
    for (int32_t first = 0; first < shape.blocks; first += kOrderThreads) {
        const int32_t i = first + thread;  // uniform trip count: the scan needs every thread
        int32_t block_total = i < shape.blocks ? __ldcg(pair_work + i) : 0;
        if (query_axis) {
            int32_t chunk_sum = 0;
            const int32_t skipping = skipping_before + cta_inclusive_scan(block_total, warp_totals, chunk_sum);
            skipping_before += chunk_sum;
            block_total = shape.key_blocks + skipping;  // skipping <= 0: the difference array counts down
            if (i < shape.blocks) pair_work[i] = block_total;
        }
        if (i < shape.blocks) {
            atomicAdd(&bins[block_total >> shape.bucket_shift], 1);
            thread_work += static_cast<unsigned long long>(block_total);
            // A single chunk is staged for step 4 here, at its tie-order position (tie_order_block()
            // is its own inverse), instead of being read back from L2 there.
            if (single_chunk) staged[tie_order_block(shape.axis, shape.blocks, i)] = block_total;
        }
    }
    // Summed over the warp first, then one shared atomic per warp: a 64-bit shared-memory add may
    // be a compare-and-swap loop, which 512 threads contending on one word would serialise.
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2)
        thread_work += __shfl_down_sync(kFullWarpMask, thread_work, offset);
    if (lane == 0 && thread_work != 0) atomicAdd(&order_head_work, thread_work);
    __syncthreads();
    const double threshold = heavy_work_threshold(shape, int64_t(order_head_work));
    if (thread == 0 && totals.tiles != nullptr) atomicAdd(totals.tiles, order_head_work);
    if (thread == 0 && totals.tile_pairs != nullptr)
        atomicAdd(totals.tile_pairs, order_head_work * pairs_per_tile);

    // 3. First output position of each bin. Lane l scans a run of bins from the heaviest down,
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

    // 4. Stable scatter in tie order.
    int32_t heavy_end = 0;  // 1 + the last position of a heavy block this lane placed
    for (int32_t chunk = 0; chunk < shape.blocks; chunk += kStagedBlocks) {
        const int32_t count = min(kStagedBlocks, shape.blocks - chunk);
        __syncthreads();  // the scan, or warp 0's placing of the previous chunk, is done
        if (!single_chunk) {
            for (int32_t i = thread; i < count; i += kOrderThreads)
                staged[i] = __ldcg(pair_work + tie_order_block(shape.axis, shape.blocks, chunk + i));
            __syncthreads();
        }
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

    // 5. This order head's heavy prefix.
    if (warp == 0) {
        heavy_end = __reduce_max_sync(kFullWarpMask, heavy_end);
        if (lane == 0 && heavy_end > 0) atomicMax(heavy_ranks, heavy_end);
    }
}

}  // namespace

void compute_tile_order(const TileOrderShape& shape, const SummaryTable& summaries, int32_t* order,
                        int32_t* workspace, const OrderTotals& totals, cudaStream_t stream,
                        const SummariesToCompute* computed, const LaunchCondition& condition) {
    if (workspace == nullptr)
        throw Error(ErrorCode::InvalidArgument, "",
                    "compute_tile_order: workspace is null, expected tile_order_workspace(shape) device int32s");
    if (computed != nullptr && !tile_order_can_compute_summaries(shape, computed->mask, summaries))
        throw Error(ErrorCode::InvalidArgument, "",
                    "compute_tile_order: asked to compute the summaries, expected the query-block axis, an index "
                    "tensor and a table of one row per order pair");
    // Zeroed on the stream (a graph node under capture): the kernel's CTAs only add to it.
    FM_CUDA_CHECK(cudaMemsetAsync(workspace, 0, sizeof(int32_t) * std::size_t(tile_order_workspace(shape)), stream));
    if (shape.order_pairs() == 0 || shape.blocks == 0) return;
    if (shape.buckets < 1 || shape.buckets > kWorkBuckets)
        throw Error(ErrorCode::InvalidArgument, "", "compute_tile_order: shape.buckets = " + std::to_string(shape.buckets) +
                                                        ", expected 1.." + std::to_string(kWorkBuckets));
    // Within the grid's 2^31 - 1: one CTA per pair is at most shape.ctas(), which
    // make_tile_order_shape() bounds; more need over kOrderWarps key blocks per pair, and the
    // pairs' 32-byte summaries (2^31 x 16 of them: 1 TB) would not fit any device's memory.
    const int64_t ctas = shape.order_pairs() * order_ctas_per_pair(shape);
    tile_order_kernel<<<unsigned(ctas), kOrderThreads, 0, stream>>>(
        shape, summaries, computed != nullptr ? computed->mask : MaskView{},
        computed != nullptr ? computed->table : nullptr, order, workspace, totals, condition);
    check_launch("flashmask tile_order_kernel");
}

}  // namespace flashmask::cuda
