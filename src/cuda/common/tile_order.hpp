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
// CTA order (TileSchedule::at). Rank r of a (batch, head) is its r-th heaviest block. Two parts:
//   1. the heavy prefix: ranks [0, R) rank-major over ALL (batch, head) pairs (rank 0 of every
//      pair, then rank 1, ...), pairs in batch-major, head-minor order;
//   2. the rest: the pairs grouped into sections of heads_per_section consecutive pairs, and
//      inside a section ranks [R, blocks) rank-major over its pairs.
// Sections keep the CTAs that run together on the K/V of a few heads (L2 locality, as the
// head-major order had), and the last section, which forms the grid's tail, ends with its
// lightest blocks. But a CTA longer than a section's whole run (causal_blockwise: ~128 key blocks
// against ~18.6 on average per query block at 8K, ~0.5 ms alone, a third of the kernel) still
// ends late when its section is the last one: it starts with that section and runs alone after
// it. The prefix starts every such CTA at the beginning of the grid, where the rest hides it; the
// light ranks keep the sections' locality. R (its rule: kHeavyFraction below) is computed on the
// device by the order kernel; R = 0 is the sections-only order exactly. Measured on an H100 (2026-11-25,
// one call, forward bf16, N = 8K, B 2, H 32, D 128, TFLOP/s), before the prefix existed:
//                     full  causal_blockwise  prefix_lm_causal  qk_sparse  document
//   sections of 8:     331               203               342        331       270
//   one section (64):  310               238               300        301       268
// A global rank-major order fixes causal_blockwise's tail but costs 7-12 % on dense masks by
// losing the L2 locality of K/V: hence a global order for the heavy ranks only.
// Ties keep the kernels' earlier order: higher query blocks first (for causal-like masks the
// heavier ones), lower key blocks first.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "flashmask/key_order.hpp"
#include "flashmask/problem.hpp"
#include "flashmask/tiles.hpp"
#include "flashmask/types.hpp"

namespace flashmask::cuda {

enum class TileAxis : int32_t {
    QueryBlocks,  // one CTA per (batch, query head, query block): forward, deterministic dQ
    KeyBlocks,    // one CTA per (batch, KV head, key block): dK / dV
};

// The argument whose rows the blocks along `axis` cut ("q" or "k"): the one a refusal of a count
// along that axis names (Error::argument()).
inline const char* blocks_argument(TileAxis axis) { return axis == TileAxis::QueryBlocks ? "q" : "k"; }
// The other axis's argument: a block's tiles are counted along that one.
inline const char* other_blocks_argument(TileAxis axis) { return axis == TileAxis::QueryBlocks ? "k" : "q"; }

// (batch, head) pairs per section, whose CTAs are interleaved rank by rank: as many as keep what
// their CTAs stream within a budget, between 1 and kMaxHeadsPerSection (heads_per_section()).
// Along query blocks (the forward, the deterministic dQ kernel) the K and V of the pairs' KV
// heads within kSectionL2Bytes; along key blocks (dK / dV) the Q, dO and float32 dQ accumulator
// rows of the pairs' query heads within kKeyBlockSectionBytes. plan_scheduled_launch()
// (tile_scheduler.cuh) sets the size on the shape of each launch.
//   * kMaxHeadsPerSection = 8: a section is still about two waves of CTAs (8 heads x 64 query
//     blocks of 128 rows = 512 CTAs at 8K against 132 SMs x 2 resident CTAs), so the last
//     section alone fills the tail with its light blocks after its heavy ones;
//   * kSectionL2Bytes = 32 MiB: 8 heads' K + V at N = 8K, D = 128, bf16 (4 MiB each), the
//     section measured at the top of this file, which fits the 50 MB L2 of an H100 (and a GQA
//     group of 8 query heads, the common ratio, shares a single K/V). At 32K one head's K + V is
//     16 MiB, so 8 heads streamed 128 MiB through it; 2 heads keep the measured 8K working set
//     (and, at 256 query blocks each, the same two waves): the full-mask forward at 32K +1-2 %,
//     level with FA2 in the same runs (bench/NOTES.md, session 11).
//   * kKeyBlockSectionBytes = 64 MiB: 8 pairs at 8K (8 MiB of Q, dO and accumulator a query
//     head, D = 128), as before; 2 at 32K (32 MiB a head) instead of 8. A dK/dV CTA walks its own
//     range of query blocks, so on a mask like share_question the CTAs running together reuse
//     each other's rows in L2 only when they belong to the same pairs: a model of the grid
//     (bench/l2_reuse_model.py: heaviest-first order on 132 slots, a row reused if touched again
//     within a few steps) puts share_question's reuse at 32K at 0.67 with 8 pairs and 0.88 with
//     2, causal_document's 0.70 and 0.89, with the same makespan. A budget of 32 MiB (one pair at
//     32K, 4 at 8K) lost 2-3 % on share_question (session 11): the model gives one-pair sections
//     a 2 % longer makespan (a section of 256 CTAs is under two waves) and a heavy prefix of 41
//     ranks over all pairs. So a dK/dV section keeps at least kMinSectionWaves waves of CTAs
//     (5 pairs, not 1, with GQA 8 at 8K: 64 MiB a KV head, 64 key blocks each).
inline constexpr int32_t kMaxHeadsPerSection = 8;
inline constexpr int32_t kMinSectionWaves = 2;
inline constexpr int64_t kSectionL2Bytes = int64_t{32} << 20;
inline constexpr int64_t kKeyBlockSectionBytes = int64_t{64} << 20;

// The pairs per section for pairs that each stream `streamed_bytes_per_pair` bytes, within `budget`.
inline int32_t heads_per_section(int64_t streamed_bytes_per_pair, int64_t budget = kSectionL2Bytes) {
    if (streamed_bytes_per_pair <= 0) return kMaxHeadsPerSection;
    const int64_t fitting = budget / streamed_bytes_per_pair;
    return int32_t(std::clamp<int64_t>(fitting, 1, kMaxHeadsPerSection));
}

// The K and V bytes that the CTAs of one (batch, head) pair read along query blocks: those of
// the pair's KV head, shared by the query heads of its group, which are consecutive pairs.
inline int64_t streamed_key_value_bytes_per_pair(const AttentionProblem& p) {
    const int64_t element = int64_t(element_size(p.dtype));
    const int64_t group = p.kv_heads > 0 && p.q_heads >= p.kv_heads ? p.q_heads / p.kv_heads : 1;
    return int64_t(p.nk) * (p.head_dim + p.value_dim) * element / group;
}

// The bytes that the dK/dV CTAs of one (batch, KV head) pair stream along key blocks: Q and dO
// of every query head of its group, and their float32 dQ accumulator rows.
inline int64_t streamed_query_bytes_per_pair(const AttentionProblem& p) {
    const int64_t element = int64_t(element_size(p.dtype));
    const int64_t group = p.kv_heads > 0 && p.q_heads >= p.kv_heads ? p.q_heads / p.kv_heads : 1;
    return group * int64_t(p.nq) * ((p.head_dim + p.value_dim) * element + p.head_dim * int64_t(sizeof(float)));
}

// The section size of a launch of `p` along `axis` (the rule above), whose pairs have
// `blocks_per_pair` CTAs each, on `cta_slots` resident CTAs.
inline int32_t section_heads(const AttentionProblem& p, TileAxis axis, int32_t blocks_per_pair, int32_t cta_slots) {
    if (axis == TileAxis::QueryBlocks) return heads_per_section(streamed_key_value_bytes_per_pair(p));
    const int32_t within_bytes = heads_per_section(streamed_query_bytes_per_pair(p), kKeyBlockSectionBytes);
    const int64_t for_waves =
        ceil_div(int64_t(kMinSectionWaves) * std::max(cta_slots, 1), int64_t{std::max(blocks_per_pair, 1)});
    return int32_t(std::clamp<int64_t>(std::max<int64_t>(within_bytes, for_waves), 1, kMaxHeadsPerSection));
}

// The heavy prefix (top of this file): which ranks run first over all pairs.
//
// While one section runs, its CTAs share the kernel's cta_slots (SMs x resident CTAs per SM), so
// each slot does about
//     slot_work = section_pairs x W / cta_slots                                   tiles,
// W being the work of one (batch, head), i.e. the sum of its blocks' work, and section_pairs =
// min(heads_per_section, batch x heads). Every pair that an order head stands for does that order
// head's whole work W (its heads_per_order_head pairs share the order, not the work), so a
// section's work is section_pairs x W whatever heads_per_order_head is. Each order CTA knows only
// its own W: with per-head masks the estimate is "a section of heads like this one".
// A block is heavy when its work exceeds kHeavyFraction x slot_work, and R is the fewest ranks that
// put every heavy block of every order head in the prefix: 1 + the last rank holding one (ranks
// are heaviest first, so up to work bins that is the number of heavy ranks), the maximum over the
// order heads.
//
// kHeavyFraction = 1, the break-even point: heaviest-first starts a section's heaviest CTAs with
// the section; one heavier than slot_work is still running when the section's other CTAs have
// drained the slots, so in the last section it alone sets the kernel's end, while a lighter one
// ends under the section's own work. A CTA left alone on its SM runs faster than when sharing it,
// which would allow a larger fraction, but erring low is the cheap side: a rank moved into the
// prefix loses only its own L2 locality, a heavy rank left out costs the whole tail.
// Check at N = 8K, B 2, H 32, 264 slots, forward (64 query blocks, up to 128 key blocks each;
// the catalogue's benchmark masks, seed 0, R from the host twin):
//   * causal_blockwise, W ~ 64 x 18.6 ~ 1190, slot_work ~ 8 x 1190 / 264 ~ 36: its last
//     document's blocks of up to 128 tiles are heavy, R = 3;
//   * prefix_lm_causal, W ~ 4400, slot_work ~ 133 > 128, the most a block can see: R = 0;
//   * qk_sparse (~61 on average), slot_work ~ 118: R = 5, its blocks of 119-128 tiles, just
//     above the line, where moving them gains and costs little either way;
//   * global_sliding_window: R = 1, the global tokens' query block (128 tiles against ~41).
// Short sequences (heads_per_section x blocks < cta_slots: several sections run at once) get a
// slot_work below the average block and a long prefix, tending to the global rank-major order:
// there is no section-sized working set to keep in L2 there anyway.
inline constexpr double kHeavyFraction = 1.0;

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
    int32_t cta_slots = 1;  // blocks of the kernel that run at once (resident CTAs); sets the heavy prefix
    int32_t heads_per_section = kMaxHeadsPerSection;  // (batch, head) pairs per section, at least 1

    FM_HOST_DEVICE int64_t order_pairs() const { return int64_t(order_batches) * order_heads; }
    FM_HOST_DEVICE int32_t query_blocks() const { return axis == TileAxis::QueryBlocks ? blocks : other_blocks; }
    FM_HOST_DEVICE int64_t ctas() const { return int64_t(batch) * heads * blocks; }
};

// The shape of the order for one call: `heads` of the CTAs are q_heads (QueryBlocks) or kv_heads
// (KeyBlocks); block_m query rows by block_n keys per tile, as the kernel that will use it;
// cta_slots: how many of its blocks run at once (SMs x resident CTAs per SM, divided by the CTAs
// per block when a block's work is split over several, each looping over all its tiles). Throws
// Error(Unsupported) when the grid or a work value would not fit int32.
inline TileOrderShape make_tile_order_shape(const MaskView& mask, int32_t batch, int32_t q_heads, int32_t kv_heads,
                                            TileAxis axis, int32_t block_m, int32_t block_n, int32_t cta_slots) {
    auto refuse = [](const std::string& what) {
        throw Error(ErrorCode::InvalidArgument, "", "flashmask tile order: " + what);
    };
    if (batch < 0) refuse("batch must be >= 0, got " + std::to_string(batch));
    if (kv_heads < 1 || q_heads < kv_heads || q_heads % kv_heads != 0)
        refuse("kv_heads = " + std::to_string(kv_heads) + " must divide q_heads = " + std::to_string(q_heads));
    if (block_m < 1 || block_n < 1)
        refuse("block_m and block_n must be >= 1, got " + std::to_string(block_m) + " and " + std::to_string(block_n));
    if (cta_slots < 1) refuse("cta_slots must be >= 1, got " + std::to_string(cta_slots));
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
    s.cta_slots = cta_slots;
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
        throw Error(ErrorCode::Unsupported, other_blocks_argument(axis),
                    "flashmask tile order: up to " + std::to_string(max_work) +
                        " tiles per block (blocks x query heads per KV head) exceed int32");
    if (s.ctas() > std::numeric_limits<int32_t>::max())
        throw Error(ErrorCode::Unsupported, blocks_argument(axis),
                    "flashmask tile order: " + std::to_string(s.ctas()) + " blocks x heads x batch exceed the grid limit");
    s.bucket_shift = work_bucket_shift(max_work);
    s.buckets = int32_t(max_work >> s.bucket_shift) + 1;
    return s;
}

// Query blocks [begin, end); empty when end <= begin.
struct BlockRun {
    int32_t begin = 0, end = 0;

    FM_HOST_DEVICE bool empty() const { return end <= begin; }
    FM_HOST_DEVICE int32_t size() const { return empty() ? 0 : end - begin; }
    FM_HOST_DEVICE bool contains(int32_t block) const { return begin <= block && block < end; }
};

// The query blocks whose rows all lie in [start, end): with rows [q block_m, min((q + 1) block_m,
// nq)) (the kernels' clipped_end()) block q qualifies when q block_m >= start and its row end <= end, which
// holds from ceil(start / block_m) on and up to end / block_m (every block when end >= nq, where
// the last, ragged block ends too). One run, found with divisions only: no product can overflow.
FM_HOST_DEVICE BlockRun query_blocks_within(int32_t start, int32_t end, int32_t block_m, int32_t nq,
                                             int32_t query_blocks) {
    const int32_t first = start <= 0 ? 0 : ceil_div(start, block_m);
    const int32_t last_end = end >= nq ? query_blocks : end < 0 ? 0 : end / block_m;
    BlockRun run;
    run.begin = first < query_blocks ? first : query_blocks;
    run.end = last_end > run.begin ? last_end : run.begin;
    return run;
}

// The query blocks that classify() calls Skipped against one key block: those inside the lower
// or the upper interval common to all its columns (every block for a block without columns), as
// at most two disjoint runs. So a tile order need not classify every tile: a key block's skipped
// query blocks are known in O(1), and a query block's work is the key blocks minus those that
// skip it (a difference array over the runs on the device, tile_scheduler.cu).
struct SkippedQueryBlocks {
    BlockRun first, second;  // disjoint; `second` empty unless the two runs neither overlap nor touch

    FM_HOST_DEVICE bool contains(int32_t block) const { return first.contains(block) || second.contains(block); }
    FM_HOST_DEVICE int32_t count() const { return first.size() + second.size(); }
};

FM_HOST_DEVICE SkippedQueryBlocks skipped_query_blocks(const BlockSummary& s, int32_t block_m, int32_t nq,
                                                       int32_t query_blocks) {
    SkippedQueryBlocks skipped;
    if (s.min_lower_start > s.max_lower_start) {  // no columns: classify() skips every row range
        skipped.first = {0, query_blocks};
        return skipped;
    }
    const BlockRun lower = query_blocks_within(s.max_lower_start, s.min_lower_end, block_m, nq, query_blocks);
    const BlockRun upper = query_blocks_within(s.max_upper_start, s.min_upper_end, block_m, nq, query_blocks);
    if (lower.empty() || upper.empty()) {
        skipped.first = lower.empty() ? upper : lower;
    } else if (lower.begin <= upper.end && upper.begin <= lower.end) {  // overlapping or adjacent: one run
        skipped.first = {lower.begin < upper.begin ? lower.begin : upper.begin,
                         lower.end > upper.end ? lower.end : upper.end};
    } else {
        skipped.first = lower;
        skipped.second = upper;
    }
    return skipped;
}

// The query blocks that skip one key on their own (a one-column summary). A key block skips the
// intersection of its keys' runs (its summary takes the latest start and the earliest end of
// each interval), so a key block holding a key that query block qb does not skip here is never
// Skipped for qb.
FM_HOST_DEVICE SkippedQueryBlocks key_skipped_query_blocks(const ColumnIntervals& c, int32_t block_m, int32_t nq,
                                                           int32_t query_blocks) {
    BlockSummary one_key = BlockSummary::empty();
    one_key.fold(c);
    return skipped_query_blocks(one_key, block_m, nq, query_blocks);
}

// The order kernel's CTA (tile_scheduler.cu): the key blocks it takes in step 1, one per warp,
// and the ints of its staging buffer (the work of the blocks it scatters at a time).
constexpr int32_t kOrderKeyBlocksPerCta = 16;
constexpr int32_t kOrderStagedInts = 2048;

// Whether each CTA of the order kernel can count the least tiles of whole key windows
// (host_least_window_tiles() below) in its staging buffer: windows of whole key blocks, CTAs of
// whole windows, and a difference array over the query blocks (one int more) that fits. Else
// the order kernel counts the visible pairs instead (host_order_visible_pairs()).
FM_HOST_DEVICE bool window_bound_fits(const TileOrderShape& s, int32_t block_n) {
    const int32_t query_blocks = s.query_blocks();
    return block_n > 0 && kKeyOrderWindow % block_n == 0 &&
           (int64_t(kOrderKeyBlocksPerCta) * block_n) % kKeyOrderWindow == 0 && query_blocks < kOrderStagedInts;
}

// The query heads whose tiles one order pair counts, in runs that share a mask head:
// f(mask_head, heads) for each run. On the query-block axis an order head is a mask head,
// counted once; on the key-block axis it stands for the query heads of one KV head.
template <typename F>
FM_HOST_DEVICE void for_each_order_mask_head(const TileOrderShape& s, int32_t order_head, F&& f) {
    if (s.axis == TileAxis::QueryBlocks) {
        f(order_head, 1);
        return;
    }
    const int32_t group = s.query_heads_per_kv_head, per_mask_head = s.query_heads_per_mask_head;
    const int32_t first_head = order_head * s.heads_per_order_head * group, end_head = first_head + group;
    for (int32_t head = first_head; head < end_head;) {
        const int32_t mask_head = head / per_mask_head;
        const int32_t run_end = (mask_head + 1) * per_mask_head < end_head ? (mask_head + 1) * per_mask_head : end_head;
        f(mask_head, run_end - head);
        head = run_end;
    }
}

// The work of block `block` of order pair (order_batch, order_head). summaries: the table of the
// shape's layout; strides 0 when one row serves all (no index tensor). O(key blocks) for a query
// block (the host twin's way; the device adds runs into a difference array instead), O(1) per
// query head run for a key block.
FM_HOST_DEVICE int32_t block_work(const TileOrderShape& s, const BlockSummary* summaries, int64_t stride_batch,
                                  int64_t stride_mask_head, int32_t order_batch, int32_t order_head, int32_t block) {
    const BlockSummary* batch_summaries = summaries + order_batch * stride_batch;
    const int32_t query_blocks = s.query_blocks();
    int32_t work = 0;
    if (s.axis == TileAxis::QueryBlocks) {
        const BlockSummary* row = batch_summaries + order_head * stride_mask_head;  // order heads are mask heads
        for (int32_t kv_block = 0; kv_block < s.other_blocks; ++kv_block)
            work += !skipped_query_blocks(row[kv_block], s.block_m, s.nq, query_blocks).contains(block);
        return work;
    }
    for_each_order_mask_head(s, order_head, [&](int32_t mask_head, int32_t heads) {
        const BlockSummary& summary = batch_summaries[mask_head * stride_mask_head + block];
        work += heads * (query_blocks - skipped_query_blocks(summary, s.block_m, s.nq, query_blocks).count());
    });
    return work;
}

// The kernels' order before this scheduler, which ties keep: query blocks from the last one down
// (for causal-like masks the heavier first), key blocks from the first one up (likewise).
FM_HOST_DEVICE int32_t tie_order_block(TileAxis axis, int32_t blocks, int32_t position) {
    return axis == TileAxis::QueryBlocks ? blocks - 1 - position : position;
}

// The (batch, head) pairs of a full section: all of them when the grid has fewer.
FM_HOST_DEVICE int64_t section_pairs(const TileOrderShape& s) {
    const int64_t pairs = int64_t(s.batch) * s.heads;
    return pairs < s.heads_per_section ? pairs : s.heads_per_section;
}

// The work above which a block of an order head is heavy (see kHeavyFraction), given the work of
// all its blocks. Doubles, for any size without overflow: multiplications and one division only,
// nothing to contract into an FMA, each correctly rounded on host and device alike, so the host
// twin and the kernel draw the line at the very same place.
FM_HOST_DEVICE double heavy_work_threshold(const TileOrderShape& s, int64_t order_head_work) {
    return kHeavyFraction * (double(section_pairs(s)) * double(order_head_work) / double(s.cta_slots));
}

FM_HOST_DEVICE bool is_heavy(int32_t work, double threshold) { return double(work) > threshold; }

struct TileCoordinates {
    int32_t batch, head, block;
};

// What a kernel needs to turn its linear CTA index into (batch, head, block): see the top of this
// file for the order. A bijection from [0, batch * heads * blocks) onto every (batch, head,
// block) for any sizes and any heavy prefix R in [0, blocks], the last section holding what is
// left of the pairs.
struct TileSchedule {
    // [order batches, order heads, blocks]: the blocks of each order heaviest first. Null: every
    // order is the tie order (no index tensor: full or plain causal attention, whose work per block
    // is monotone in that order, so sorting would not move anything).
    const int32_t* order = nullptr;
    // R, the ranks that go first over all pairs, written by the order kernel. Null: R = 0.
    const int32_t* heavy_ranks = nullptr;
    int64_t order_stride_batch = 0, order_stride_head = 0;
    int32_t heads = 1, blocks = 0, pairs = 0;  // pairs = batch * heads
    int32_t heads_per_order_head = 1;
    int32_t heads_per_section = kMaxHeadsPerSection;  // TileOrderShape's
    TileAxis axis = TileAxis::QueryBlocks;

    // cta in [0, pairs * blocks).
    FM_HOST_DEVICE TileCoordinates at(int32_t cta) const {
        // Unsigned 32-bit arithmetic: every value is below 2^31 (make_tile_order_shape checks the grid).
        const uint32_t heavy = heavy_ranks != nullptr ? uint32_t(*heavy_ranks) : 0u;
        const uint32_t all_pairs = uint32_t(pairs), heavy_ctas = heavy * all_pairs;  // <= the grid
        uint32_t rank, pair;
        if (uint32_t(cta) < heavy_ctas) {  // the heavy prefix: rank-major over all pairs
            rank = uint32_t(cta) / all_pairs;
            pair = uint32_t(cta) - rank * all_pairs;
        } else {  // sections of heads_per_section pairs over the light ranks [heavy, blocks)
            const uint32_t rest = uint32_t(cta) - heavy_ctas;
            const uint32_t light_ranks = uint32_t(blocks) - heavy;  // >= 1: rest < all_pairs * light_ranks
            const uint32_t per_section = uint32_t(heads_per_section);
            // rest / (per_section * light_ranks), whose divisor may not fit 32 bits.
            const uint32_t section = rest / light_ranks / per_section;
            const uint32_t offset = rest - section * per_section * light_ranks;  // <= rest
            const uint32_t first_pair = section * per_section;
            const uint32_t left = all_pairs - first_pair;
            const uint32_t pairs_here = left < per_section ? left : per_section;
            const uint32_t light_rank = offset / pairs_here;
            rank = heavy + light_rank;
            pair = first_pair + (offset - light_rank * pairs_here);
        }
        const int32_t batch = int32_t(pair / uint32_t(heads)), head = int32_t(pair % uint32_t(heads));
        const int32_t order_head = head / heads_per_order_head;
        const int32_t block = order != nullptr
                                  ? order[batch * order_stride_batch + order_head * order_stride_head + int32_t(rank)]
                                  : tie_order_block(axis, blocks, int32_t(rank));
        return {batch, head, block};
    }
};

// The schedule of `shape` reading `order` (laid out [order batches, order heads, blocks]; null:
// the tie order) and the heavy prefix R at `heavy_ranks` (null: 0).
inline TileSchedule make_tile_schedule(const TileOrderShape& shape, const int32_t* order, const int32_t* heavy_ranks) {
    TileSchedule t;
    t.order = order;
    t.heavy_ranks = heavy_ranks;
    t.order_stride_head = shape.blocks;
    t.order_stride_batch = shape.order_batches == 1 ? 0 : int64_t(shape.order_heads) * shape.blocks;  // shared by batches
    t.heads = shape.heads > 0 ? shape.heads : 1;
    t.blocks = shape.blocks;
    t.pairs = int32_t(int64_t(shape.batch) * shape.heads);  // <= the grid, checked to fit int32
    t.heads_per_order_head = shape.heads_per_order_head;
    t.heads_per_section = shape.heads_per_section > 0 ? shape.heads_per_section : 1;
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
                work.push_back(block_work(s, summaries.data(), stride_batch, stride_mask_head, b, h, block));
    return work;
}

// The visible pairs of keys first, first + step, ... (< end) of order pair (batch, order_head),
// once for each query head whose tiles the pair's work counts, so that they compare with its
// tiles' pairs: KeyOrder::Automatic's least pairs where window_bound_fits() does not hold
// (OrderTotals::least_pairs, tile_scheduler.cuh). The order kernel's lanes each take every
// kWarpSize-th key of a block; host_order_visible_pairs() takes them all.
FM_HOST_DEVICE unsigned long long order_visible_pairs(const TileOrderShape& s, const MaskView& mask, int32_t batch,
                                                      int32_t order_head, int64_t first, int64_t end, int64_t step) {
    unsigned long long pairs = 0;
    for_each_order_mask_head(s, order_head, [&](int32_t mask_head, int32_t heads) {
        for (int64_t j = first; j < end; j += step)
            pairs += static_cast<unsigned long long>(heads) *
                     static_cast<unsigned long long>(
                         column_intervals(mask, batch, mask_head, int32_t(j)).visible_rows(mask.nq));
    });
    return pairs;
}

// The mask's visible pairs as the order kernel counts them, over every order pair.
inline unsigned long long host_order_visible_pairs(const TileOrderShape& s, const MaskView& mask) {
    unsigned long long pairs = 0;
    for (int32_t b = 0; b < s.order_batches; ++b)
        for (int32_t h = 0; h < s.order_heads; ++h) pairs += order_visible_pairs(s, mask, b, h, 0, mask.nk, 1);
    return pairs;
}

// The fewest tiles that any order of the keys within windows of kKeyOrderWindow keys computes
// (KeyOrder::Automatic's bound, sorted_order_may_pay()): in each window, query block qb needs at
// least ceil(k / block_n) key blocks, k being the window's keys that qb does not skip on their
// own (key_skipped_query_blocks()). Per order pair, once for each query head whose tiles the
// pair counts, as block_work(). The order kernel's count where window_bound_fits(); O(keys +
// query blocks) per window with a difference array, as here.
inline unsigned long long host_least_window_tiles(const TileOrderShape& s, const MaskView& mask, int32_t block_n) {
    const int32_t query_blocks = s.query_blocks();
    unsigned long long tiles = 0;
    std::vector<int32_t> skipping(std::size_t(query_blocks) + 1);
    for (int32_t b = 0; b < s.order_batches; ++b)
        for (int32_t h = 0; h < s.order_heads; ++h)
            for_each_order_mask_head(s, h, [&](int32_t mask_head, int32_t heads) {
                for (int64_t first = 0; first < mask.nk; first += kKeyOrderWindow) {
                    const int64_t end = std::min<int64_t>(first + kKeyOrderWindow, mask.nk);
                    std::fill(skipping.begin(), skipping.end(), 0);
                    for (int64_t j = first; j < end; ++j) {
                        const SkippedQueryBlocks runs = key_skipped_query_blocks(
                            column_intervals(mask, b, mask_head, int32_t(j)), s.block_m, s.nq, query_blocks);
                        for (const BlockRun& run : {runs.first, runs.second}) {
                            if (run.empty()) continue;
                            ++skipping[std::size_t(run.begin)];
                            --skipping[std::size_t(run.end)];
                        }
                    }
                    int32_t skipped_keys = 0;
                    for (int32_t qb = 0; qb < query_blocks; ++qb) {
                        skipped_keys += skipping[std::size_t(qb)];
                        tiles += static_cast<unsigned long long>(heads) *
                                 static_cast<unsigned long long>(ceil_div(int32_t(end - first) - skipped_keys, block_n));
                    }
                }
            });
    return tiles;
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

// R, the heavy prefix (see kHeavyFraction): per order head, 1 + the last rank of `order` whose
// block is heavy against that order head's threshold; the maximum over order heads, 0 if none.
// The device kernel computes the same with the same heavy_work_threshold() and is_heavy().
inline int32_t host_heavy_prefix_ranks(const TileOrderShape& s, const std::vector<int32_t>& work,
                                       const std::vector<int32_t>& order) {
    int32_t heavy_ranks = 0;
    for (int64_t pair = 0; pair < s.order_pairs(); ++pair) {
        const int32_t* pair_work = work.data() + pair * s.blocks;
        const int32_t* pair_order = order.data() + pair * s.blocks;
        const int64_t order_head_work = std::accumulate(pair_work, pair_work + s.blocks, int64_t(0));
        const double threshold = heavy_work_threshold(s, order_head_work);
        for (int32_t rank = s.blocks - 1; rank >= heavy_ranks; --rank)
            if (is_heavy(pair_work[pair_order[rank]], threshold)) {
                heavy_ranks = rank + 1;
                break;
            }
    }
    return heavy_ranks;
}

}  // namespace flashmask::cuda
