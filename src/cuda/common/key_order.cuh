// Reading the keys in sorted order (KeyOrder, types.hpp): the kernels see a key-permuted problem.
//
// Why. Attention is exact under any permutation of the keys (with the mask's columns permuted
// alike). Tiles of consecutive keys cap random eviction at ~0.75 of the computed pairs visible,
// because its evicted columns are scattered through every key block; sorted by their intervals
// inside windows of kKeyOrderWindow keys they gather into blocks that are mostly Skipped or Full
// (bench/NOTES.md, session 6: 0.746 -> 0.936 at 32K; 0.67 -> 0.92 of the own-full forward rate
// measured with the unchanged kernels on a permuted copy).
//
// How, per call, when the order applies (key_order_use()):
//   1. SortedKeys: one CTA per window of each (batch, mask head) sorts the window's keys by the
//      rule of flashmask/key_order.hpp and writes the order and the permuted intervals as a
//      non-causal C = 4 index tensor, which the kernels read as any other mask. Its host twin
//      is sorted_key_order() (mask.hpp).
//   2. Block summaries and the heaviest-first tile order of the sorted mask, as for any mask
//      (one launch for both on the query-block axis: TileScheduler::computes_summaries()).
//   3. KeyOrder::Automatic: both tile orders add their computed tiles into a WorkComparison;
//      the launches of both variants are queued, and every CTA of the one not chosen returns at
//      once (LaunchCondition). The natural order's tile order also counts the fewest tiles
//      any order within windows can compute (each query block needs its window's visible keys
//      packed in whole key blocks); when that shows that no order can compute few enough to pay
//      (sorted_order_may_pay()), the kernels that build the sorted order (steps 1-2) return at
//      once as well: on the masks the sort does not help they were ~1 % of a 32K call, all
//      of it wasted (bench/NOTES.md, session 19). The choice stays on the device: no host
//      synchronisation, and a call can be captured into a CUDA graph. A host that waited for the counts and queued one
//      variant measured no faster in one (not interleaved) run (bench/NOTES.md, session 7:
//      causal_document at 32K, forward 2.59 ms against 2.46 ms with the choice on the device).
//   4. Forward: K and V gathered in the order into scratch (gather_keys); the forward kernel is
//      unchanged. dK/dV: its CTA loads its one K/V block through the order and stores dK/dV
//      through it (KeyOrderView); its query loop is unchanged. The deterministic dQ kernel keeps
//      the keys' own order: it is correct either way.
// The order is one per (batch, KV head), as a CTA of the dK/dV kernel serves every query head of
// its KV head: so it applies to masks with an index tensor and Hm in {1, Hk}.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <optional>

#include "cuda/common/check.hpp"
#include "cuda/common/key_order_choice.hpp"
#include "cuda/common/tile_scheduler.cuh"
#include "cuda/common/workspace.cuh"
#include "flashmask/key_order.hpp"
#include "flashmask/problem.hpp"
#include "flashmask/tiles.hpp"
#include "flashmask/types.hpp"

namespace flashmask::cuda {

// Where a kernel finds the order of (batch, mask head): position j of the sorted problem is key
// keys(batch, mask_head)[j] of the caller's. A null `order`: the keys' own order.
struct KeyOrderView {
    const int32_t* order = nullptr;  // [batch, mask heads, Nk]
    int64_t stride_batch = 0, stride_head = 0;

    FM_HOST_DEVICE const int32_t* keys(int32_t batch, int32_t mask_head) const {
        return order + batch * stride_batch + mask_head * stride_head;
    }
};

// The counters of one KeyOrder::Automatic choice (WorkCounter, key_order_choice.hpp), added up
// on the device by the two tile orders and read by the LaunchConditions of both variants.
class WorkComparison {
public:
    explicit WorkComparison(cudaStream_t stream) : scratch_(kWorkCounters * sizeof(unsigned long long), stream) {
        FM_CUDA_CHECK(cudaMemsetAsync(counters(), 0, kWorkCounters * sizeof(unsigned long long), stream));
    }
    // What each order's tile-order kernel adds to (OrderTotals, tile_scheduler.cuh).
    OrderTotals natural_totals(const MaskView& mask) const {
        return {counters() + kNaturalTiles, counters() + kNaturalTilePairs, counters() + kLeastSortedPairs, mask};
    }
    OrderTotals sorted_totals() const { return {counters() + kSortedTiles, nullptr, nullptr}; }
    LaunchCondition when(bool sorted) const { return {counters(), sorted}; }

private:
    unsigned long long* counters() const { return scratch_.as<unsigned long long>(); }
    DeviceScratch scratch_;
};

// Step 1 on `stream`: the order and the permuted mask of every (batch, mask head), in scratch
// owned by this object. p.mask must have an index tensor (key_order_use() says Sorted or Chosen).
// The sort's CTAs return at once unless condition.sorted_order_possible().
class SortedKeys {
public:
    SortedKeys(const AttentionProblem& p, const LaunchCondition& condition, cudaStream_t stream);

    // The permuted intervals as a non-causal C = 4 mask of p's shape and mask heads.
    const MaskView& mask() const { return mask_; }
    const KeyOrderView& order() const { return order_; }

private:
    int64_t columns_;  // batch x mask heads x Nk
    DeviceScratch scratch_;
    MaskView mask_;
    KeyOrderView order_;
};

// Steps 1-3 for one scheduled kernel: the block summaries and tile order of each order the call
// may run, built on `stream` (the natural one first, so that both counts are in when anything
// reads the comparison), with the condition of each launch. Keep it alive until the launches
// are queued. `shape`: the kernel's (plan_scheduled_launch()), whose key blocks are block_n.
class KeyOrderedTiles {
public:
    KeyOrderedTiles(const AttentionProblem& p, KeyOrder option, const TileOrderShape& shape, int32_t block_n,
                    cudaStream_t stream)
        : use_(key_order_use(p, option)) {
        if (use_ == KeyOrderUse::Chosen) comparison_.emplace(stream);
        if (use_ != KeyOrderUse::Sorted)
            build(p.mask, p, shape, block_n, comparison_ ? comparison_->natural_totals(p.mask) : OrderTotals{},
                  LaunchCondition{}, natural_summaries_, natural_tiles_, stream);
        if (use_ == KeyOrderUse::Natural) return;
        sorted_.emplace(p, sorted_condition(), stream);
        build(sorted_->mask(), p, shape, block_n, comparison_ ? comparison_->sorted_totals() : OrderTotals{},
              sorted_condition(), sorted_summaries_, sorted_tiles_, stream);
    }

    bool natural_runs() const { return use_ != KeyOrderUse::Sorted; }
    bool sorted_runs() const { return use_ != KeyOrderUse::Natural; }
    // Natural order (natural_runs()).
    const SummaryTable& natural_table() const { return natural_summaries_->table(); }
    const TileSchedule& natural_schedule() const { return natural_tiles_->schedule(); }
    LaunchCondition natural_condition() const { return comparison_ ? comparison_->when(false) : LaunchCondition{}; }
    // Sorted order (sorted_runs()).
    const MaskView& sorted_mask() const { return sorted_->mask(); }
    const KeyOrderView& sorted_order() const { return sorted_->order(); }
    const SummaryTable& sorted_table() const { return sorted_summaries_->table(); }
    const TileSchedule& sorted_schedule() const { return sorted_tiles_->schedule(); }
    LaunchCondition sorted_condition() const { return comparison_ ? comparison_->when(true) : LaunchCondition{}; }

private:
    // The summaries and the order of one mask (the caller's, or the sorted one). Where the order
    // kernel can compute the summaries too (the forward's query-block order of a mask with an
    // index tensor), that one launch does both: the summaries kernel and its launch gap were a
    // third of the forward's preprocessing at 8K (bench/NOTES.md, session 9). Both kernels return
    // at once unless condition.sorted_order_possible() (the sorted order's, under Chosen).
    static void build(const MaskView& mask, const AttentionProblem& p, const TileOrderShape& shape, int32_t block_n,
                      const OrderTotals& totals, const LaunchCondition& condition,
                      std::optional<BlockSummaries>& summaries, std::optional<TileScheduler>& tiles,
                      cudaStream_t stream) {
        const bool fused = TileScheduler::computes_summaries(mask, shape);
        summaries.emplace(mask, p.batch, p.q_heads, block_n, stream,
                          fused ? BlockSummaries::SummaryFill::ByTileOrder : BlockSummaries::SummaryFill::Kernel,
                          condition);
        const SummariesToCompute computed{mask, summaries->writable()};
        tiles.emplace(mask, shape, summaries->table(), stream, totals, fused ? &computed : nullptr, condition);
    }

    KeyOrderUse use_;
    std::optional<WorkComparison> comparison_;
    std::optional<BlockSummaries> natural_summaries_;
    std::optional<TileScheduler> natural_tiles_;
    std::optional<SortedKeys> sorted_;
    std::optional<BlockSummaries> sorted_summaries_;
    std::optional<TileScheduler> sorted_tiles_;
};

// Forward, step 4: keys (K or V, `source` [batch, Nk, heads, row_elements] of element_bytes each,
// rows 16-byte aligned) in p's order into `destination` (contiguous, same shape), when `condition`
// holds. q_heads_per_kv_head and query_heads_per_mask_head map a KV head to its mask head.
void gather_keys(const Operand& source, const Operand& destination, int32_t element_bytes, int32_t row_elements,
                 const AttentionProblem& p, const KeyOrderView& order, const LaunchCondition& condition,
                 cudaStream_t stream);

}  // namespace flashmask::cuda
