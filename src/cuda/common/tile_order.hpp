// Heaviest-first CTA order for the attention kernels: the parts shared by host and device. No
// CUDA runtime here, so that the CPU tests check the very code the kernels run (the device side,
// the kernel that builds the order and its host class, is tile_scheduler.cuh).
//
// Why. A kernel launches one CTA per (batch, head, block) along one axis (query blocks for the
// forward and the deterministic dQ kernel, key blocks for dK/dV). Masks whose work per block is
// uneven (causal_blockwise: the last document's query blocks see every earlier key, ~7x the
// average) lose a quarter of the time to the grid's tail when heavy CTAs start late and run alone
// at the end. So each (batch, head) gets its blocks sorted by work, heaviest first.
//
// Work of a block = its non-Skipped tiles by classify() (tiles.hpp) on the block summaries:
//   * query-block axis: the key blocks a query block visits;
//   * key-block axis:   the query blocks a key block visits, summed over the query heads of its
//                       KV head group (the dK/dV CTA of a KV head loops over all of them).
// Partial and Full tiles count 1 each: the kernels' rule that a Full tile of a ragged last key
// block runs as Partial changes no count, it never turns a tile into Skipped or back.
//
// CTA order (TileSchedule::at). (batch, head) pairs keep today's batch-major, head-minor order,
// grouped into sections of kHeadsPerSection consecutive pairs. Inside a section the CTAs go
// rank-major: rank 0 (each head's heaviest block) for every head of the section, then rank 1, and
// so on. The CTAs that run together thus cover the K/V of one section only (L2 locality, as the
// head-major order had), and the last section, which forms the grid's tail, ends with its
// lightest blocks. Ties keep the kernels' earlier order: higher query blocks first (for
// causal-like masks the heavier ones), lower key blocks first.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "flashmask/tiles.hpp"
#include "flashmask/types.hpp"

namespace flashmask::cuda {

enum class TileAxis : int32_t {
    QueryBlocks,  // one CTA per (batch, query head, query block): forward, deterministic dQ
    KeyBlocks,    // one CTA per (batch, KV head, key block): dK / dV
};

// (batch, head) pairs per section, whose CTAs are interleaved rank by rank. 8 because:
//   * their K/V stays L2-resident: at N = 8K, D = 128, bf16, one head's K + V is 4 MB, so a
//     section's 32 MB fits the 50 MB L2 of an H100 (and a GQA group of 8 query heads, the
//     common ratio, shares a single K/V);
//   * a section is still about two waves of CTAs (8 heads x 64 query blocks of 128 rows = 512
//     CTAs at 8K against 132 SMs x 2 resident CTAs), so the last section alone fills the tail
//     with its light blocks after its heavy ones.
inline constexpr int32_t kHeadsPerSection = 8;

// Histogram bins of the device counting sort, one int32 each: 32 KB of shared memory, under the
// 48 KB a kernel gets without opting in. Work values up to kWorkBuckets - 1 (e.g. 8191 key blocks
// of 64 = 512K keys) sort exactly; larger ones are bucketed by a right shift (work_bucket_shift).
inline constexpr int32_t kWorkBuckets = 8192;

// The smallest shift that maps every work value in [0, max_work] to a bin below kWorkBuckets.
inline int32_t work_bucket_shift(int64_t max_work) {
    int32_t shift = 0;
    while ((max_work >> shift) >= kWorkBuckets) ++shift;
    return shift;
}

// Everything the order of one call depends on besides the summaries. Built on the host by
// make_tile_order_shape(), passed by value to the kernel that sorts.
struct TileOrderShape {
    TileAxis axis = TileAxis::QueryBlocks;
    int32_t batch = 0, heads = 0;  // the CTAs' (batch, head): heads are query heads, or KV heads (KeyBlocks)
    int32_t blocks = 0;            // blocks along the axis: CTAs per (batch, head)
    int32_t other_blocks = 0;      // blocks along the other axis: tiles per block
    int32_t nq = 0, block_m = 0;   // query rows, and rows per query block
    // One order per (order batch, order head); head h uses order head h / heads_per_order_head.
    // With no index tensor every (batch, head) sees the same mask: one order for all.
    int32_t order_batches = 0, order_heads = 0, heads_per_order_head = 1;
    // The block summaries, laid out [order batches, summary heads, key blocks] (BlockSummaries).
    int32_t summary_heads = 0, key_blocks = 0;
    int32_t query_heads_per_kv_head = 1, query_heads_per_mask_head = 1;
    int32_t bucket_shift = 0, buckets = 1;  // work w sorts by bin w >> bucket_shift, bins [0, buckets)

    FM_HOST_DEVICE int64_t order_pairs() const { return int64_t(order_batches) * order_heads; }
    FM_HOST_DEVICE int64_t ctas() const { return int64_t(batch) * heads * blocks; }
};

// The shape of the order for one call: `heads` of the CTAs are q_heads (QueryBlocks) or kv_heads
// (KeyBlocks); block_m query rows by block_n keys per tile, as the kernel that will use it. Throws
// Error(Unsupported) when the grid or a work value would not fit int32.
inline TileOrderShape make_tile_order_shape(const MaskView& mask, int32_t batch, int32_t q_heads, int32_t kv_heads,
                                            TileAxis axis, int32_t block_m, int32_t block_n) {
    auto refuse = [](const std::string& what) {
        throw Error(ErrorCode::InvalidArgument, "", "flashmask tile order: " + what);
    };
    if (batch < 0) refuse("batch must be >= 0, got " + std::to_string(batch));
    if (kv_heads < 1 || q_heads < kv_heads || q_heads % kv_heads != 0)
        refuse("kv_heads = " + std::to_string(kv_heads) + " must divide q_heads = " + std::to_string(q_heads));
    if (block_m < 1 || block_n < 1)
        refuse("block_m and block_n must be >= 1, got " + std::to_string(block_m) + " and " + std::to_string(block_n));
    const bool shared = mask.layout == MaskLayout::None;
    const int32_t per_mask_head = shared ? q_heads : mask.query_heads_per_mask_head;
    if (per_mask_head < 1 || q_heads % per_mask_head != 0)
        refuse("mask.query_heads_per_mask_head = " + std::to_string(per_mask_head) + " must divide q_heads = " +
               std::to_string(q_heads));

    TileOrderShape s;
    s.axis = axis;
    s.batch = batch;
    s.nq = mask.nq;
    s.block_m = block_m;
    s.query_heads_per_kv_head = q_heads / kv_heads;
    s.query_heads_per_mask_head = per_mask_head;
    s.summary_heads = q_heads / per_mask_head;
    s.key_blocks = ceil_div(mask.nk, block_n);
    s.order_batches = shared ? 1 : batch;
    const int32_t query_blocks = ceil_div(mask.nq, block_m);
    int64_t max_work = 0;
    if (axis == TileAxis::QueryBlocks) {
        s.heads = q_heads;
        s.blocks = query_blocks;
        s.other_blocks = s.key_blocks;
        s.order_heads = s.summary_heads;  // one order per mask head
        s.heads_per_order_head = per_mask_head;
        max_work = s.other_blocks;
    } else {
        s.heads = kv_heads;
        s.blocks = s.key_blocks;
        s.other_blocks = query_blocks;
        // One mask head for all: the KV heads' groups see the same mask. Otherwise one order per
        // KV head, which is exact for any mask heads (a group may span several of them).
        s.order_heads = s.summary_heads == 1 ? 1 : kv_heads;
        s.heads_per_order_head = kv_heads / s.order_heads;
        max_work = int64_t(s.other_blocks) * s.query_heads_per_kv_head;
    }
    if (max_work > std::numeric_limits<int32_t>::max())
        throw Error(ErrorCode::Unsupported, "q",
                    "flashmask tile order: up to " + std::to_string(max_work) +
                        " tiles per block (blocks x query heads per KV head) exceed int32");
    if (s.ctas() > std::numeric_limits<int32_t>::max())
        throw Error(ErrorCode::Unsupported, "q",
                    "flashmask tile order: " + std::to_string(s.ctas()) + " blocks x heads x batch exceed the grid limit");
    s.bucket_shift = work_bucket_shift(max_work);
    s.buckets = int32_t(max_work >> s.bucket_shift) + 1;
    return s;
}

// The rows [begin, end) of query block q_block.
struct RowRange {
    int32_t begin, end;
};
FM_HOST_DEVICE RowRange query_block_rows(int32_t q_block, int32_t block_m, int32_t nq) {
    const int32_t begin = q_block * block_m;  // q_block < ceil(nq / block_m): begin < nq
    return {begin, nq - begin < block_m ? nq : begin + block_m};  // no int32 overflow near 2^31
}

// The work of block `block` of order pair (order_batch, order_head), or with step > 1 the part of
// it over the other axis's blocks first, first + step, ... (the device splits that loop over the
// lanes of a warp and adds the parts). summaries: the table of the shape's layout; strides 0 when
// one row serves all (no index tensor).
FM_HOST_DEVICE int32_t block_work(const TileOrderShape& s, const BlockSummary* summaries, int64_t stride_batch,
                                  int64_t stride_mask_head, int32_t order_batch, int32_t order_head, int32_t block,
                                  int32_t first, int32_t step) {
    const BlockSummary* batch_summaries = summaries + order_batch * stride_batch;
    int32_t work = 0;
    if (s.axis == TileAxis::QueryBlocks) {
        const BlockSummary* row = batch_summaries + order_head * stride_mask_head;  // order heads are mask heads
        const RowRange rows = query_block_rows(block, s.block_m, s.nq);
        for (int32_t kv_block = first; kv_block < s.other_blocks; kv_block += step)
            work += classify(row[kv_block], rows.begin, rows.end) != TileKind::Skipped;
        return work;
    }
    // The query heads of the KV head this order stands for, in runs that share one mask head.
    const int32_t group = s.query_heads_per_kv_head, per_mask_head = s.query_heads_per_mask_head;
    const int32_t first_head = order_head * s.heads_per_order_head * group, end_head = first_head + group;
    for (int32_t head = first_head; head < end_head;) {
        const int32_t mask_head = head / per_mask_head;
        const int32_t run_end = (mask_head + 1) * per_mask_head < end_head ? (mask_head + 1) * per_mask_head : end_head;
        const BlockSummary& summary = batch_summaries[mask_head * stride_mask_head + block];
        int32_t visited = 0;
        for (int32_t q_block = first; q_block < s.other_blocks; q_block += step) {
            const RowRange rows = query_block_rows(q_block, s.block_m, s.nq);
            visited += classify(summary, rows.begin, rows.end) != TileKind::Skipped;
        }
        work += visited * (run_end - head);
        head = run_end;
    }
    return work;
}

// The kernels' order before this scheduler, which ties keep: query blocks from the last one down
// (for causal-like masks the heavier first), key blocks from the first one up (likewise).
FM_HOST_DEVICE int32_t tie_order_block(TileAxis axis, int32_t blocks, int32_t position) {
    return axis == TileAxis::QueryBlocks ? blocks - 1 - position : position;
}

struct TileCoordinates {
    int32_t batch, head, block;
};

// What a kernel needs to turn its linear CTA index into (batch, head, block): see the top of this
// file for the order. A bijection from [0, batch * heads * blocks) onto every (batch, head,
// block) for any sizes, the last section holding what is left of the pairs.
struct TileSchedule {
    // [order batches, order heads, blocks]: the blocks of each order heaviest first. Null: every
    // order is the tie order (no index tensor: full or plain causal attention, whose work per block
    // is monotone in that order, so sorting would not move anything).
    const int32_t* order = nullptr;
    int64_t order_stride_batch = 0, order_stride_head = 0;
    int32_t heads = 1, blocks = 0, pairs = 0;  // pairs = batch * heads
    int32_t heads_per_order_head = 1;
    int32_t section_ctas = 1;  // kHeadsPerSection * blocks; clamped to int32 (then there is one section)
    TileAxis axis = TileAxis::QueryBlocks;

    // cta in [0, pairs * blocks).
    FM_HOST_DEVICE TileCoordinates at(int32_t cta) const {
        // Unsigned 32-bit arithmetic: every value is below 2^31 (make_tile_order_shape checks the grid).
        const uint32_t section = uint32_t(cta) / uint32_t(section_ctas);
        const uint32_t offset = uint32_t(cta) - section * uint32_t(section_ctas);
        const uint32_t first_pair = section * uint32_t(kHeadsPerSection);
        const uint32_t left = uint32_t(pairs) - first_pair;
        const uint32_t section_pairs = left < uint32_t(kHeadsPerSection) ? left : uint32_t(kHeadsPerSection);
        const uint32_t rank = offset / section_pairs;
        const uint32_t pair = first_pair + (offset - rank * section_pairs);
        const int32_t batch = int32_t(pair / uint32_t(heads)), head = int32_t(pair % uint32_t(heads));
        const int32_t order_head = head / heads_per_order_head;
        const int32_t block = order != nullptr
                                  ? order[batch * order_stride_batch + order_head * order_stride_head + int32_t(rank)]
                                  : tie_order_block(axis, blocks, int32_t(rank));
        return {batch, head, block};
    }
};

// The schedule of `shape` reading `order` (laid out [order batches, order heads, blocks]; null:
// the tie order).
inline TileSchedule make_tile_schedule(const TileOrderShape& shape, const int32_t* order) {
    TileSchedule t;
    t.order = order;
    t.order_stride_head = shape.blocks;
    t.order_stride_batch = shape.order_batches == 1 ? 0 : int64_t(shape.order_heads) * shape.blocks;  // shared by batches
    t.heads = shape.heads > 0 ? shape.heads : 1;
    t.blocks = shape.blocks;
    t.pairs = int32_t(int64_t(shape.batch) * shape.heads);  // <= the grid, checked to fit int32
    t.heads_per_order_head = shape.heads_per_order_head;
    const int64_t section_ctas = int64_t(kHeadsPerSection) * shape.blocks;
    t.section_ctas = int32_t(std::clamp<int64_t>(section_ctas, 1, std::numeric_limits<int32_t>::max()));
    t.axis = shape.axis;
    return t;
}

// ---------------------------------------------------------------------------------------------
// The host twin, for tests: the same work and the same order as the device kernel.
// ---------------------------------------------------------------------------------------------

// Work of every block, [order batches, order heads, blocks], from host summaries laid out as
// block_summaries() (mask.hpp) writes them for (order_batches, summary_heads, block_n).
inline std::vector<int32_t> host_block_work(const TileOrderShape& s, const std::vector<BlockSummary>& summaries) {
    const int64_t stride_mask_head = s.key_blocks, stride_batch = int64_t(s.summary_heads) * s.key_blocks;
    if (int64_t(summaries.size()) != s.order_batches * stride_batch)
        throw Error(ErrorCode::InvalidArgument, "summaries",
                    "host_block_work: " + std::to_string(summaries.size()) + " summaries, expected " +
                        std::to_string(s.order_batches * stride_batch));
    std::vector<int32_t> work;
    work.reserve(std::size_t(s.order_pairs()) * s.blocks);
    for (int32_t b = 0; b < s.order_batches; ++b)
        for (int32_t h = 0; h < s.order_heads; ++h)
            for (int32_t block = 0; block < s.blocks; ++block)
                work.push_back(block_work(s, summaries.data(), stride_batch, stride_mask_head, b, h, block, 0, 1));
    return work;
}

// The order, [order batches, order heads, blocks]: per pair, the tie order stably sorted by work
// bin (work >> bucket_shift), highest first. The device's counting sort gives the same result.
inline std::vector<int32_t> host_tile_order(const TileOrderShape& s, const std::vector<int32_t>& work) {
    std::vector<int32_t> order(work.size());
    for (int64_t pair = 0; pair < s.order_pairs(); ++pair) {
        const int32_t* pair_work = work.data() + pair * s.blocks;
        int32_t* pair_order = order.data() + pair * s.blocks;
        for (int32_t position = 0; position < s.blocks; ++position)
            pair_order[position] = tie_order_block(s.axis, s.blocks, position);
        std::stable_sort(pair_order, pair_order + s.blocks, [&](int32_t a, int32_t b) {
            return (pair_work[a] >> s.bucket_shift) > (pair_work[b] >> s.bucket_shift);
        });
    }
    return order;
}

}  // namespace flashmask::cuda
