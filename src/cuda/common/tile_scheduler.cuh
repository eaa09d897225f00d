// The heaviest-first CTA order of one call on the device (the order itself, and why, is
// tile_order.hpp). A kernel launched with batch * heads * blocks CTAs along one axis takes a
// TileSchedule and maps its blockIdx.x through TileSchedule::at().
//
// Cost: a memset of the workspace (work, R, arrivals) and one launch of a CTA per 16 key blocks
// of each order pair (one pair per mask head, or per KV head on the key-block axis; one in all
// without an index tensor): a warp per key block reads its 32-byte summary (or, for the
// forward's query-block order, folds the block's columns into it: SummariesToCompute) and finds
// the query blocks the block skips in O(1) (O(B * Hm * key blocks) in all, Hm -> Hq for the
// key-block axis), then the pair's last CTA sums them into work and counting-sorts the pair's
// blocks. No launch at all without an index tensor: full and plain causal attention keep the
// tie order, which is already sorted, and R = 0.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>

#include "cuda/common/check.hpp"
#include "cuda/common/device.hpp"
#include "cuda/common/key_order_choice.hpp"
#include "cuda/common/shared_memory.hpp"
#include "cuda/common/tile_order.hpp"
#include "cuda/common/workspace.cuh"
#include "flashmask/problem.hpp"

namespace flashmask::cuda {

// The device int32s compute_tile_order() works in: each block's work, [order batches, order
// heads, blocks] (an output), then the heavy prefix R, then one arrival count per order pair
// (the CTAs of a pair; the last to arrive sorts the pair).
inline int64_t tile_order_workspace(const TileOrderShape& shape) {
    return shape.order_pairs() * shape.blocks + 1 + shape.order_pairs();
}
// R inside that workspace (the order kernel and the host read it through this one helper).
FM_HOST_DEVICE int32_t* tile_order_heavy_ranks(const TileOrderShape& shape, int32_t* workspace) {
    return workspace + shape.order_pairs() * shape.blocks;
}

// Block summaries that the order kernel computes itself, into `table` (the layout of the
// SummaryTable it is given, which it then need not read): the forward's preprocessing in one
// launch instead of two. Only where tile_order_can_compute_summaries().
struct SummariesToCompute {
    MaskView mask;
    BlockSummary* table = nullptr;
};

// Where the order kernel may compute the summaries: the query-block axis (each key block's
// summary serves one order pair's query blocks) of a mask with an index tensor (else no order
// is built).
inline bool order_kind_computes_summaries(const TileOrderShape& shape, const MaskView& mask) {
    return shape.axis == TileAxis::QueryBlocks && mask.layout != MaskLayout::None;
}

// That, and a table holding exactly one row per order pair.
inline bool tile_order_can_compute_summaries(const TileOrderShape& shape, const MaskView& mask,
                                             const SummaryTable& table) {
    return order_kind_computes_summaries(shape, mask) &&
           table.blocks == shape.key_blocks && table.stride_mask_head == shape.key_blocks &&
           table.stride_batch == int64_t(shape.order_heads) * shape.key_blocks &&
           shape.order_heads == shape.summary_heads;
}

// What one order's kernel adds up for KeyOrder::Automatic (WorkComparison, key_order.cuh), into
// device counters that the caller zeroes; a null pointer is not counted.
struct OrderTotals {
    unsigned long long* tiles = nullptr;          // every block's work: the order's computed tiles
    unsigned long long* tile_pairs = nullptr;     // those tiles times block_m x block_n
    // At most the pairs of the tiles that any order of `mask`'s keys within windows computes, counted
    // over the same query heads as the tiles: host_least_window_tiles() x block_m x block_n where
    // window_bound_fits() (tile_order.hpp), else the visible pairs (host_order_visible_pairs()).
    unsigned long long* least_pairs = nullptr;
    MaskView mask;
};

// For every (order batch, order head) of `shape`: writes each block's work into the workspace
// (tile_order_workspace(shape) device int32s, which it zeroes first), the blocks heaviest first
// into `order` ([order batches, order heads, blocks]) and the heavy prefix R
// (host_heavy_prefix_ranks(), tile_order.hpp) into tile_order_heavy_ranks(). `summaries` is the
// call's table at the key-block granularity `shape` was made for, counting shape.key_blocks
// blocks (TileScheduler checks that before it calls this). Runs the sort for any mask layout
// (the host class below skips it when no index tensor makes it moot). totals: what it adds up
// besides (OrderTotals). computed, when not null: the kernel computes the summaries into
// computed->table first (refused unless tile_order_can_compute_summaries()). Every CTA returns
// at once unless condition.sorted_order_possible() (the sorted order's, under Automatic).
void compute_tile_order(const TileOrderShape& shape, const SummaryTable& summaries, int32_t* order,
                        int32_t* workspace, const OrderTotals& totals, cudaStream_t stream,
                        const SummariesToCompute* computed = nullptr, const LaunchCondition& condition = {});

// The blocks of `kernel` that run at once on the current device, the cta_slots of its schedule:
// SMs x its resident CTAs per SM at `threads` threads and `dynamic_smem_bytes` of shared memory
// (ask after opting in to that much, allow_shared_memory()), divided by `ctas_per_block` when
// each block's work is split over that many CTAs that each loop over all its tiles (column
// splits). Host calls only, legal during stream capture.
template <typename Kernel>
int32_t resident_block_slots(Kernel kernel, int threads, int dynamic_smem_bytes, int ctas_per_block) {
    if (ctas_per_block < 1)
        throw Error(ErrorCode::InvalidArgument, "", "resident_block_slots: ctas_per_block must be >= 1, got " +
                                                        std::to_string(ctas_per_block));
    int per_sm = 0;
    FM_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, std::size_t(dynamic_smem_bytes)));
    if (per_sm < 1)
        throw Error(ErrorCode::Unsupported, "",
                    "flashmask tile scheduler: the kernel fits no CTA of " + std::to_string(threads) + " threads and " +
                        std::to_string(dynamic_smem_bytes) + " bytes of dynamic shared memory on an SM");
    const int32_t slots = current_device_sms() * per_sm / ctas_per_block;
    return slots > 0 ? slots : 1;  // fewer slots than CTAs per block: one block at a time
}

// CTAs of a scheduled kernel: one per (batch, head, block) of its schedule and column split, in
// grid dimension x (at most 2^31 - 1; make_tile_order_shape() has checked the shape's own count).
inline unsigned scheduled_ctas(const TileOrderShape& shape, int column_splits, const char* kernel) {
    const int64_t ctas = shape.ctas() * column_splits;
    if (ctas > std::numeric_limits<int32_t>::max())
        throw Error(ErrorCode::Unsupported, blocks_argument(shape.axis),
                    std::string("flashmask: ") + kernel + " needs " + std::to_string(ctas) +
                        " CTAs (blocks x heads x batch x column splits), more than the grid's 2^31 - 1");
    return unsigned(ctas);
}

// One launch of a scheduled kernel (forward, dK/dV, deterministic dQ), decided on the host before
// its call queues any work: the kernel opted in to its shared memory, the shape of its
// heaviest-first order and its grid. Planning it throws every refusal the launch would meet (more
// shared memory than the device offers, a CTA that fits no SM, tiles per block or a grid past
// int32) while the stream is still untouched.
template <typename Kernel>
struct ScheduledLaunch {
    Kernel kernel;
    int smem_bytes;
    TileOrderShape shape;
    unsigned grid;
};

// `Traits`: the kernel's ForwardTraits, DkDv or Dq (kBlockM, kBlockN, kThreads, kColSplits).
// `function`: the API entry point ("forward", "backward"), `name` the kernel, both named in refusals.
template <typename Traits, typename Kernel>
ScheduledLaunch<Kernel> plan_scheduled_launch(Kernel kernel, int smem_bytes, const AttentionProblem& p,
                                              TileAxis axis, const char* function, const char* name) {
    check_shared_memory(function, kernel, smem_bytes, name);  // before opting in: a CUDA error otherwise
    allow_shared_memory(kernel, smem_bytes);          // before the occupancy query
    const int32_t slots = resident_block_slots(kernel, Traits::kThreads, smem_bytes, Traits::kColSplits);
    // Work counted with the kernel's own kBlockM x kBlockN tiles.
    TileOrderShape shape = make_tile_order_shape(p.mask, p.batch, p.q_heads, p.kv_heads, axis, Traits::kBlockM,
                                                 Traits::kBlockN, slots);
    shape.heads_per_section = section_heads(p, axis, shape.blocks, slots);
    return {kernel, smem_bytes, shape, scheduled_ctas(shape, Traits::kColSplits, name)};
}

// The order of one call, built on `stream` into scratch memory owned by this object (stream
// ordered and legal inside CUDA graph capture, as BlockSummaries). Keep it alive until the kernel
// that reads schedule() has been queued.
class TileScheduler {
public:
    // heads of the CTAs: q_heads (QueryBlocks) or kv_heads (KeyBlocks). block_m: the kernel's
    // query rows per block; the key-block granularity is the summaries' (table.block_n), which
    // must be the kernel's too. cta_slots: resident_block_slots() of the kernel.
    TileScheduler(const MaskView& mask, int32_t batch, int32_t q_heads, int32_t kv_heads, TileAxis axis,
                  int32_t block_m, const SummaryTable& summaries, int32_t cta_slots, cudaStream_t stream)
        : TileScheduler(mask,
                        make_tile_order_shape(mask, batch, q_heads, kv_heads, axis, block_m, summaries.block_n,
                                              cta_slots),
                        summaries, stream) {}

    // The same for a shape the caller made beforehand with make_tile_order_shape() (and the
    // summaries' block_n), so that it can refuse a call (grid, tile counts) before it queues any
    // work, the summaries included. Throws if the shape counts other key blocks than `summaries`.
    // totals, condition: see compute_tile_order() (with no index tensor nothing is added up).
    // computed: the summaries for the order kernel to compute (BlockSummaries made with
    // SummaryFill::ByTileOrder); only where computes_summaries(mask, shape), else refused.
    TileScheduler(const MaskView& mask, const TileOrderShape& shape, const SummaryTable& summaries,
                  cudaStream_t stream, const OrderTotals& totals = {}, const SummariesToCompute* computed = nullptr,
                  const LaunchCondition& condition = {})
        : shape_(checked_against(shape, summaries)),
          sorted_(mask.layout != MaskLayout::None && shape_.ctas() > 0),
          scratch_(sorted_ ? sizeof(int32_t) * std::size_t(shape_.order_pairs() * shape_.blocks +
                                                          tile_order_workspace(shape_))
                           : 0,
                   stream) {
        if (computed != nullptr && !computes_summaries(mask, shape_))
            throw Error(ErrorCode::InvalidArgument, "",
                        "flashmask tile scheduler: asked to compute the block summaries, which only the "
                        "query-block order of a mask with an index tensor and CTAs to order does");
        if (sorted_) compute_tile_order(shape_, summaries, order(), work(), totals, stream, computed, condition);
        schedule_ = make_tile_schedule(shape_, order(), heavy_ranks());
    }

    // Whether this scheduler's order kernel can compute the call's block summaries as well (then
    // no summaries kernel runs): it runs (an index tensor, CTAs to order), and on the query-block
    // axis, where each key block's summary serves exactly one order pair.
    static bool computes_summaries(const MaskView& mask, const TileOrderShape& shape) {
        return order_kind_computes_summaries(shape, mask) && shape.ctas() > 0;
    }

    const TileSchedule& schedule() const { return schedule_; }
    const TileOrderShape& shape() const { return shape_; }
    // [order batches, order heads, blocks] device arrays, then R (one device int32, the first of
    // the order's counters); null when no sort ran (no index tensor: the tie order, R = 0).
    int32_t* order() const { return sorted_ ? scratch_.as<int32_t>() : nullptr; }
    int32_t* work() const { return sorted_ ? order() + shape_.order_pairs() * shape_.blocks : nullptr; }
    int32_t* heavy_ranks() const { return sorted_ ? tile_order_heavy_ranks(shape_, work()) : nullptr; }

private:
    static const TileOrderShape& checked_against(const TileOrderShape& shape, const SummaryTable& summaries) {
        if (shape.key_blocks != summaries.blocks)
            throw Error(ErrorCode::InvalidArgument, "",
                        "flashmask tile scheduler: the order's shape counts " + std::to_string(shape.key_blocks) +
                            " key blocks, its summaries " + std::to_string(summaries.blocks) +
                            "; expected one key-block size (block_n) for both");
        return shape;
    }

    TileOrderShape shape_;
    bool sorted_;
    DeviceScratch scratch_;
    TileSchedule schedule_;
};

}  // namespace flashmask::cuda
